// plangate browser client: a small dependency-free ES module.
//
//   import { createPlangate } from "/client/plangate.js";
//   const plangate = createPlangate({ getToken: (refresh) => user.getIdToken(refresh) });
//   await plangate.upgradePlan("pro", { source: "pricing", button: event.currentTarget });
//
// Every method resolves with the API's JSON answer or rejects with a PlangateError
// (`code`, `status`, `message`, and `plan` for ALREADY_SUBSCRIBED). Types: plangate.d.ts.

/** Error codes the client itself produces (the others are the API's, see /openapi.json). */
export const CLIENT_CODES = Object.freeze(["NETWORK_ERROR", "TIMEOUT", "BAD_RESPONSE"]);

export class PlangateError extends Error {
  constructor({ code, status, message, body = null, requestId = null }) {
    super(message || code);
    this.name = "PlangateError";
    /** The API's `code` (e.g. "QUOTA_EXCEEDED"), or one of CLIENT_CODES. */
    this.code = code;
    /** The HTTP status; 0 when no answer arrived. */
    this.status = status;
    /** ALREADY_SUBSCRIBED: the plan of the live subscription. */
    this.plan = body && typeof body.plan === "string" ? body.plan : null;
    /** The whole error body: `limit`/`used`/`resetsAt`, `balance`/`required`, `invoiceUrl`… */
    this.details = body;
    /** The response's X-Request-Id: quote it when reporting a problem. */
    this.requestId = requestId;
  }
}

/** A sentence for a user, for every code the API or the client produces. */
const MESSAGES = {
  AUTH_REQUIRED: "Please sign in again.",
  FORBIDDEN: "You are not allowed to do that.",
  NOT_FOUND: "This service is not available here.",
  METHOD_NOT_ALLOWED: "This service is not available here.",
  PAYLOAD_TOO_LARGE: "That request is too large.",
  INVALID_REQUEST: "That request was not understood. Reload the page and try again.",
  INVALID_SIGNATURE: "That request was refused.",
  INVALID_PAYLOAD: "That request was refused.",
  ALREADY_PROCESSED: "That was already done.",
  WEBHOOK_NOT_CONFIGURED: "Billing is not set up yet. Please try again later.",
  WEBHOOK_FAILED: "Billing could not be updated. It will be retried.",
  WEBHOOK_RETRY_LATER: "Billing could not be updated. It will be retried.",
  INVALID_PLAN: "That plan does not exist.",
  ALREADY_ON_PLAN: "You are already on this plan.",
  DOWNGRADE_NOT_ALLOWED: "That plan is lower than yours: choose a downgrade instead.",
  NOT_A_DOWNGRADE: "That plan is not lower than yours.",
  ALREADY_SUBSCRIBED: "You already have a subscription. Change it from your account page.",
  PAYMENT_PENDING: "A payment is waiting: pay the open invoice or cancel it first.",
  TRIAL_ALREADY_USED: "You have already used your free trial.",
  NO_ACTIVE_SUBSCRIPTION: "You have no active subscription to change.",
  BILLING_IN_PROGRESS: "Another billing change is in progress. Please try again in a moment.",
  CUSTOMER_NOT_FOUND: "Your billing account could not be set up. Please try again later.",
  CUSTOMER_MISSING: "Your billing account could not be found at the payment provider. Please contact support.",
  CUSTOMER_RECORD_NOT_FOUND: "No customer profile was found for this account.",
  SUBSCRIPTION_ITEM_MISSING: "Your subscription cannot be changed automatically. Please contact support.",
  UPDATE_FAILED: "The payment provider did not accept the change. Nothing was changed; please try again.",
  CHECKOUT_FAILED: "The checkout could not be opened. Please try again.",
  PORTAL_FAILED: "The billing portal could not be opened. Please try again.",
  LEGACY_RECORD_UNREADABLE: "Your plan from our previous system could not be read. Please contact support.",
  SERVER_ERROR: "Something went wrong on our side. Please try again later.",
  QUOTA_EXCEEDED: "You have used this feature's allowance for this period.",
  FEATURE_NOT_IN_PLAN: "Your plan does not include this feature: upgrade to use it.",
  INSUFFICIENT_CREDITS: "You do not have enough credits: buy a credit pack.",
  UNKNOWN_FEATURE: "That feature does not exist.",
  UNKNOWN_PACK: "That credit pack does not exist.",
  PACK_NOT_AVAILABLE: "That credit pack is not for sale right now.",
  IDEMPOTENCY_KEY_REUSED: "That request was already made with other details.",
  REASON_REQUIRED: "A reason is required.",
  USER_NOT_FOUND: "That account does not exist.",
  CUSTOMER_EXISTS: "A customer record with these details already exists.",
  FIELD_NOT_WRITABLE: "That detail cannot be changed here.",
  INVALID_CSV: "That file could not be read.",
  FILES_MISSING: "Some files are still missing: upload them first.",
  PURGE_INCOMPLETE: "Not everything could be deleted yet. Please try again.",
  NETWORK_ERROR: "The service could not be reached. Check your connection and try again.",
  TIMEOUT: "The service took too long to answer. Please try again.",
  BAD_RESPONSE: "The service answered unexpectedly. Please try again later.",
};

/** A user-facing sentence for an error (a PlangateError, a code, or anything else). */
export function errorMessage(error) {
  const code = typeof error === "string" ? error : error && error.code;
  return MESSAGES[code] || MESSAGES.SERVER_ERROR;
}

/** The codes `errorMessage` has a sentence for. */
export const KNOWN_CODES = Object.freeze(Object.keys(MESSAGES));

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function randomKey() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
}

/** Marks `button` busy (disabled, aria-busy, optional data-loading-text); returns the undo. */
function busy(button) {
  if (!button) return () => {};
  const was = { disabled: button.disabled, text: button.textContent };
  button.disabled = true;
  if (button.setAttribute) button.setAttribute("aria-busy", "true");
  const loading = button.dataset && button.dataset.loadingText;
  if (loading) button.textContent = loading;
  return () => {
    button.disabled = was.disabled;
    if (button.removeAttribute) button.removeAttribute("aria-busy");
    if (loading) button.textContent = was.text;
  };
}

/**
 * @param {object} options
 * @param {string} [options.baseUrl] where plangate is served ("" = this origin)
 * @param {(forceRefresh?: boolean) => (string|null|Promise<string|null>)} options.getToken the user's ID token
 */
export function createPlangate(options = {}) {
  const {
    baseUrl = "",
    getToken = () => null,
    fetch: fetchImpl = (...args) => globalThis.fetch(...args),
    retryDelayMs = 1000,
    timeoutMs = 30000,
    location = globalThis.location,
    eventTarget = typeof globalThis.dispatchEvent === "function" ? globalThis : null,
  } = options;
  const base = String(baseUrl).replace(/\/+$/, "");
  const here = () => (location && location.href ? String(location.href) : undefined);

  async function once(method, path, body, auth, forceRefresh) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (auth) {
      const token = await getToken(forceRefresh);
      if (token) headers.Authorization = `Bearer ${token}`;
    }
    const abort = typeof AbortController === "function" ? new AbortController() : null;
    const timer = abort && timeoutMs > 0 ? setTimeout(() => abort.abort(), timeoutMs) : null;
    let response;
    try {
      response = await fetchImpl(base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: abort ? abort.signal : undefined,
      });
    } catch (e) {
      const timedOut = abort && abort.signal.aborted;
      throw new PlangateError({
        code: timedOut ? "TIMEOUT" : "NETWORK_ERROR",
        status: 0,
        message: timedOut ? "No answer in time" : String((e && e.message) || e),
      });
    } finally {
      if (timer) clearTimeout(timer);
    }
    const requestId = response.headers && response.headers.get ? response.headers.get("X-Request-Id") : null;
    let json = null;
    try {
      json = await response.json();
    } catch {
      json = null;
    }
    if (!json || typeof json !== "object") {
      throw new PlangateError({
        code: "BAD_RESPONSE",
        status: response.status,
        message: `Unexpected answer (${response.status})`,
        requestId,
      });
    }
    if (json.ok === false || !response.ok) {
      throw new PlangateError({
        code: typeof json.code === "string" ? json.code : "BAD_RESPONSE",
        status: response.status,
        message: typeof json.message === "string" ? json.message : `Request failed (${response.status})`,
        body: json,
        requestId,
      });
    }
    return json;
  }

  /** One call; a 401 is retried once with a refreshed token, BILLING_IN_PROGRESS once after a wait. */
  async function call(method, path, body, { auth = true } = {}) {
    let refreshed = false;
    let waited = false;
    for (;;) {
      try {
        return await once(method, path, body, auth, refreshed);
      } catch (e) {
        if (e.code === "AUTH_REQUIRED" && auth && !refreshed) {
          refreshed = true;
          continue;
        }
        if (e.code === "BILLING_IN_PROGRESS" && !waited) {
          waited = true;
          await sleep(retryDelayMs);
          continue;
        }
        throw e;
      }
    }
  }

  const client = {
    /** The last plan seen (GET /api/plan/me, or a billing action's answer). */
    plan: null,

    async getPlan() {
      const plan = await call("GET", "/api/plan/me");
      client.plan = plan;
      return plan;
    },
    getPlans: () => call("GET", "/api/plans", undefined, { auth: false }),
    getEntitlements: () => call("GET", "/api/entitlements"),
    getUsage: () => call("GET", "/api/usage"),
    getCredits({ limit, cursor } = {}) {
      const q = new URLSearchParams();
      if (limit) q.set("limit", String(limit));
      if (cursor) q.set("cursor", cursor);
      const s = q.toString();
      return call("GET", `/api/credits${s ? `?${s}` : ""}`);
    },

    /** No subscription: Checkout (the browser goes there). Active: changed in place. Trialing: paid now. */
    async upgradePlan(targetPlan, { source, returnUrl, button } = {}) {
      const done = busy(button);
      try {
        const answer = await call("POST", "/api/upgrade-plan", {
          targetPlan,
          returnUrl: returnUrl || here(),
          source,
        });
        if (answer.action === "redirect") {
          follow(answer.url);
        } else if (answer.action === "updated") {
          await changed(answer);
        }
        return answer;
      } finally {
        done();
      }
    },
    /** The trial of the entry tier, through Checkout (once per user). */
    startTrial({ returnUrl, button } = {}) {
      return redirecting(button, "/api/stripe-checkout", { plan: "trial", returnUrl: returnUrl || here() });
    },
    downgradePlan(targetPlan, { button } = {}) {
      return acting(button, "/api/downgrade-plan", { targetPlan });
    },
    cancel({ button } = {}) {
      return acting(button, "/api/cancel-subscription", {});
    },
    resume({ button } = {}) {
      return acting(button, "/api/resume-subscription", {});
    },
    openBillingPortal({ returnUrl, button } = {}) {
      return redirecting(button, "/api/billing-portal", { returnUrl: returnUrl || here() });
    },
    buyCredits(pack, { returnUrl, button } = {}) {
      return redirecting(button, "/api/credits/checkout", { pack, returnUrl: returnUrl || here() });
    },
    /** Counts one use (or `amount`) of a feature, once per idempotency key (a fresh one by default). */
    consume(feature, { amount = 1, idempotencyKey = randomKey() } = {}) {
      return call("POST", "/api/usage/consume", { feature, amount, idempotencyKey });
    },
  };

  function follow(url) {
    if (!url) throw new PlangateError({ code: "BAD_RESPONSE", status: 200, message: "No URL to go to" });
    if (location && typeof location.assign === "function") location.assign(url);
  }

  async function redirecting(button, path, body) {
    const done = busy(button);
    try {
      const answer = await call("POST", path, body);
      follow(answer.url);
      return answer;
    } finally {
      done();
    }
  }

  /** A billing action answering the plan: kept, and announced. */
  async function acting(button, path, body) {
    const done = busy(button);
    try {
      const answer = await call("POST", path, body);
      announce(answer, answer.action);
      return answer;
    } finally {
      done();
    }
  }

  /** After an in-place change: the plan as it is now (the answer's tier if it cannot be read). */
  async function changed(answer) {
    let plan;
    try {
      plan = await call("GET", "/api/plan/me");
    } catch {
      plan = { ...(client.plan || {}), ok: true, plan: answer.plan };
    }
    announce(plan, "updated");
  }

  function announce(plan, action) {
    const previous = client.plan;
    client.plan = plan;
    if (!eventTarget || typeof CustomEvent !== "function") return;
    eventTarget.dispatchEvent(
      new CustomEvent("plangate:planchanged", {
        detail: { plan, previousPlan: previous ? previous.plan : null, action: action || null },
      }),
    );
  }

  return client;
}
