//! `POST /api/admin/migrations/credits`: the legacy credit import (README, "Importing
//! legacy credits").

use serde_json::Value;

use super::{admin, Ctx, Reply};
use crate::domain::credit_import::{rows_json, LegacyFile};
use crate::domain::csv::CsvError;
use crate::error::ApiError;
use crate::store::credit_import::{self, Upload};

fn bool_query(ctx: &Ctx<'_>, name: &str, default: bool) -> Result<bool, ApiError> {
    match ctx.query(name).as_deref() {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(_) => Err(ApiError::InvalidRequest(format!("{name} must be true or false"))),
    }
}

fn invalid_csv(file: LegacyFile, e: CsvError) -> ApiError {
    ApiError::Detailed {
        status: 400,
        code: "INVALID_CSV",
        message: format!("{} line {}: {}; nothing was imported from it", file.name(), e.line, e.message),
        fields: crate::obj! {"file": file.name(), "line": e.line},
    }
}

/// A file given with `?file=`, read whole: its rows as JSON text and their number.
fn read(ctx: &Ctx<'_>, name: &str) -> Result<(LegacyFile, String, usize), ApiError> {
    let file = LegacyFile::from_name(name)
        .ok_or_else(|| ApiError::InvalidRequest("file must be users, payments or credit_transactions".into()))?;
    let text = std::str::from_utf8(&ctx.body).map_err(|e| {
        let line = 1 + ctx.body[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        invalid_csv(file, CsvError { line, message: "not UTF-8".into() })
    })?;
    let (rows, count) = rows_json(file, text).map_err(|e| invalid_csv(file, e))?;
    Ok((file, rows, count))
}

/// `?file=users|payments|credit_transactions` with the CSV as the body stages that
/// file (`&append=true`: a further part of it, each part with the header line); `?commit=true` (alone or with the last file) runs the import of the three
/// staged files, only planned while `dryRun` (default true).
pub async fn import(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    admin::authorize(ctx)?;
    let dry_run = bool_query(ctx, "dryRun", true)?;
    let commit = bool_query(ctx, "commit", false)?;
    let upload = match ctx.query("file") {
        Some(name) => Some(read(ctx, &name)?),
        None if commit => None,
        None => return Err(ApiError::InvalidRequest("give a file with ?file=…, or ?commit=true".into())),
    };
    let append = bool_query(ctx, "append", false)?;
    let staging = upload.as_ref().map(|(file, rows, count)| Upload { file: *file, rows, count: *count, append });
    let (staged, fault) = credit_import::stage(ctx.db, staging, ctx.now).await?;
    if let (Some((file, ..)), Some(e)) = (upload, fault) {
        return Err(invalid_csv(file, e));
    }
    let mut missing = Vec::new();
    for f in LegacyFile::ALL {
        if staged.get(f.name()).is_none() {
            missing.push(Value::from(f.name()));
        }
    }
    if !commit {
        return Ok(Reply::ok(crate::obj! {"ok": true, "staged": staged, "missing": missing}));
    }
    if !missing.is_empty() {
        return Err(ApiError::Detailed {
            status: 409,
            code: "FILES_MISSING",
            message: "upload the three files first (see missing)".into(),
            fields: crate::obj! {"staged": staged, "missing": missing},
        });
    }
    let mut report = credit_import::run(ctx.db, dry_run, ctx.now).await?;
    crate::log::info(ctx.request_id, "credits.legacy_import", crate::obj! {"dryRun": dry_run});
    report["ok"] = true.into();
    report["dryRun"] = dry_run.into();
    report["staged"] = staged;
    Ok(Reply::ok(report))
}
