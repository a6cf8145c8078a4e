// The `make dev` stack for the browser tests: the Stripe stand-in and `wrangler dev`
// (static pages, ENVIRONMENT=development) on free loopback ports, with a fresh local
// D1/KV and secrets of their own (never the developer's .dev.vars).

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, existsSync, openSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import net from "node:net";

export const ROOT = new URL("../../", import.meta.url).pathname;
const WRANGLER = join(ROOT, "node_modules/.bin/wrangler");
const STANDIN = join(ROOT, "target/debug/examples/stripe-standin");

export const SECRETS = {
  AUTH_JWT_SECRET: "browser-test-secret-0123456789abcdef0123456789",
  STRIPE_WEBHOOK_SECRET: "whsec_browser_tests",
  STRIPE_SECRET_KEY: "sk_test_standin",
  ADMIN_TOKEN: "browser-admin-token-0123456789",
  SERVICE_JWT_SECRET: "browser-service-secret-0123456789abcdef",
};

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitFor(url, ms, child, log) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (child.exitCode !== null) throw new Error(`${url}: the process exited (${child.exitCode}); see ${log}`);
    try {
      const r = await fetch(url);
      if (r.status === 200) return;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${url} did not answer in ${ms} ms; see ${log}`);
}

export async function startStack() {
  for (const [file, how] of [[WRANGLER, "make node-tools"], [STANDIN, "make standin"], [join(ROOT, "build/index.js"), "make worker"]]) {
    if (!existsSync(file)) throw new Error(`${file} is missing: run \`${how}\` (make test does)`);
  }
  const [port, standinPort, inspector] = [await freePort(), await freePort(), await freePort()];
  const base = `http://127.0.0.1:${port}`;
  const standinBase = `http://127.0.0.1:${standinPort}`;
  const dir = mkdtempSync(join(tmpdir(), "plangate-browser-"));
  const env = { ...process.env, CI: "1", WRANGLER_SEND_METRICS: "false", NO_COLOR: "1" };
  execFileSync(WRANGLER, ["d1", "migrations", "apply", "DB", "--local", "--persist-to", dir], { cwd: ROOT, env, stdio: "ignore" });

  const vars = { ...SECRETS, ALLOWED_ORIGINS: base, STRIPE_API_BASE: standinBase, ENVIRONMENT: "development" };
  const envFile = join(dir, "browser.env");
  writeFileSync(envFile, Object.entries(vars).map(([k, v]) => `${k}=${v}`).join("\n") + "\n");
  const standinLog = join(dir, "standin.log");
  const standin = spawn(STANDIN, ["--port", String(standinPort), "--worker", base, "--webhook-secret", SECRETS.STRIPE_WEBHOOK_SECRET], {
    cwd: ROOT, env, stdio: ["ignore", "ignore", openSync(standinLog, "a")],
  });
  const workerLog = join(dir, "wrangler.log");
  const args = ["dev", "--local", "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(inspector),
    "--persist-to", dir, "--env-file", envFile, "--show-interactive-dev-session=false", "--test-scheduled",
    ...Object.entries(vars).flatMap(([k, v]) => ["--var", `${k}:${v}`])];
  const out = openSync(workerLog, "a");
  const worker = spawn(WRANGLER, args, { cwd: ROOT, env, stdio: ["ignore", out, out], detached: true });
  const stop = () => {
    try { process.kill(-worker.pid, "SIGINT"); } catch { /* gone */ }
    standin.kill();
  };
  try {
    await waitFor(`${standinBase}/`, 20000, standin, standinLog);
    await waitFor(`${base}/health`, 180000, worker, workerLog);
  } catch (e) {
    stop();
    throw e;
  }
  return {
    base,
    standin: standinBase,
    logs: { worker: workerLog, standin: standinLog },
    async stop() {
      stop();
      await new Promise((r) => setTimeout(r, 500));
      if (!process.env.PLANGATE_KEEP_STATE) rmSync(dir, { recursive: true, force: true });
    },
  };
}
