// Unit tests of public/client/plangate.js with Node's test runner and a stubbed fetch:
// `make client-test` (part of `make test`), or `node --test tests/client/`.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import {
  CLIENT_CODES,
  KNOWN_CODES,
  PlangateError,
  createPlangate,
  errorMessage,
} from "../../public/client/plangate.js";

const openapi = JSON.parse(readFileSync(new URL("../../public/openapi.json", import.meta.url), "utf8"));
const API_CODES = openapi.components.schemas.ErrorCode.enum;
/** code → status, from the document's per-operation error responses. */
const STATUS = {};
for (const item of Object.values(openapi.paths)) {
  for (const op of Object.values(item)) {
    for (const [status, resp] of Object.entries(op.responses)) {
      const schema = resp.$ref
        ? openapi.components.responses[resp.$ref.split("/").pop()].content?.["application/json"]?.schema
        : resp.content?.["application/json"]?.schema;
      const own = schema?.$ref ? openapi.components.schemas[schema.$ref.split("/").pop()] : null;
      for (const part of [...(schema?.allOf ?? []), ...(own ? [own] : [])]) {
        const code = part.properties?.code;
        for (const c of code?.enum ?? (code?.const ? [code.const] : [])) STATUS[c] = Number(status);
      }
    }
  }
}

const PLAN = {
  ok: true, plan: "free", subscriptionStatus: null, trialEndsAt: null, currentPeriodEnd: null,
  cancelAt: null, scheduledPlan: null, scheduledAt: null, planUpdatedAt: "2026-11-24T11:27:18Z",
};

function json(status, body, headers = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json", "X-Request-Id": "req_0123456789abcdef", ...headers },
  });
}

/** A fetch answering from `answers` in order (a function gets the call); records every call. */
function stubFetch(...answers) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    calls.push({ url, ...init, body: init.body === undefined ? undefined : JSON.parse(init.body) });
    const next = answers.length > 1 ? answers.shift() : answers[0];
    if (typeof next === "function") return next(url, init);
    if (next instanceof Error) throw next;
    return next.clone();
  };
  return { fetch, calls };
}

function fakeButton(text = "Upgrade") {
  const attrs = new Map();
  return {
    disabled: false,
    textContent: text,
    dataset: { loadingText: "Working…" },
    setAttribute: (k, v) => attrs.set(k, v),
    removeAttribute: (k) => attrs.delete(k),
    getAttribute: (k) => attrs.get(k) ?? null,
  };
}

function fakeLocation() {
  return { href: "https://app.example.test/account", assigned: [], assign(url) { this.assigned.push(url); } };
}

function client(fetch, extra = {}) {
  const tokens = [];
  const c = createPlangate({
    baseUrl: "https://api.example.test/",
    getToken: (refresh) => {
      tokens.push(refresh ?? false);
      return refresh ? "fresh-token" : "token";
    },
    fetch,
    retryDelayMs: 5,
    location: fakeLocation(),
    eventTarget: new EventTarget(),
    ...extra,
  });
  return { c, tokens };
}

test("every code of the API's ErrorCode schema becomes a PlangateError with its code, status and message", async () => {
  assert.ok(API_CODES.length >= 36, `${API_CODES.length} codes`);
  for (const code of API_CODES) {
    const status = STATUS[code];
    assert.ok(status >= 400, `${code} has a documented status`);
    const body = { ok: false, code, message: `the API says ${code}` };
    if (code === "ALREADY_SUBSCRIBED") body.plan = "pro";
    // BILLING_IN_PROGRESS is retried once: answer it twice.
    const { fetch, calls } = stubFetch(json(status, body));
    const { c } = client(fetch);
    await assert.rejects(c.getEntitlements(), (e) => {
      assert.ok(e instanceof PlangateError && e instanceof Error, code);
      assert.equal(e.name, "PlangateError");
      assert.equal(e.code, code);
      assert.equal(e.status, status, code);
      assert.equal(e.message, `the API says ${code}`);
      assert.equal(e.requestId, "req_0123456789abcdef");
      assert.deepEqual(e.details, body);
      assert.equal(e.plan, code === "ALREADY_SUBSCRIBED" ? "pro" : null);
      return true;
    });
    const expectedCalls = code === "BILLING_IN_PROGRESS" || code === "AUTH_REQUIRED" ? 2 : 1;
    assert.equal(calls.length, expectedCalls, `${code}: calls`);
  }
});

test("every code, the API's and the client's own, has its own sentence for users", () => {
  for (const code of [...API_CODES, ...CLIENT_CODES]) {
    assert.ok(KNOWN_CODES.includes(code), `${code} has a message`);
    const m = errorMessage(new PlangateError({ code, status: 400, message: "x" }));
    assert.ok(m.length > 10 && m.endsWith("."), `${code}: ${m}`);
  }
  assert.equal(errorMessage("NO_SUCH_CODE"), errorMessage("SERVER_ERROR"));
  assert.equal(errorMessage(new TypeError("boom")), errorMessage("SERVER_ERROR"));
  assert.equal(errorMessage(undefined), errorMessage("SERVER_ERROR"));
  assert.notEqual(errorMessage("QUOTA_EXCEEDED"), errorMessage("INSUFFICIENT_CREDITS"));
});

test("ALREADY_SUBSCRIBED carries the plan of the live subscription", async () => {
  const { fetch } = stubFetch(json(409, { ok: false, code: "ALREADY_SUBSCRIBED", message: "m", plan: "essential" }));
  const { c } = client(fetch);
  const button = fakeButton();
  await assert.rejects(c.upgradePlan("pro", { button }), (e) => e.code === "ALREADY_SUBSCRIBED" && e.plan === "essential");
  assert.equal(button.disabled, false, "restored after an error");
});

test("the extra fields of QUOTA_EXCEEDED, INSUFFICIENT_CREDITS and PAYMENT_PENDING are in details", async () => {
  const cases = [
    [402, { code: "QUOTA_EXCEEDED", limit: 3, used: 3, resetsAt: "2026-12-01T00:00:00Z", feature: "ats_score" }],
    [402, { code: "INSUFFICIENT_CREDITS", balance: 5, required: 10 }],
    [409, { code: "PAYMENT_PENDING", subscriptionStatus: "incomplete", invoiceUrl: "https://invoice.stripe.test/i/1" }],
  ];
  for (const [status, extra] of cases) {
    const body = { ok: false, message: "m", ...extra };
    const { c } = client(stubFetch(json(status, body)).fetch);
    await assert.rejects(c.consume("ats_score"), (e) => {
      for (const [k, v] of Object.entries(extra)) assert.equal(e.details[k], v, `${extra.code}.${k}`);
      return true;
    });
  }
});

test("BILLING_IN_PROGRESS is retried once after a short wait, and succeeds", async () => {
  const busy = json(409, { ok: false, code: "BILLING_IN_PROGRESS", message: "busy" });
  const { fetch, calls } = stubFetch(busy, json(200, { ...PLAN, action: "cancel_scheduled", cancelAt: "2026-12-24T00:00:00Z" }));
  const { c } = client(fetch);
  const started = Date.now();
  const answer = await c.cancel();
  assert.equal(answer.action, "cancel_scheduled");
  assert.equal(calls.length, 2);
  assert.deepEqual(calls[0].body, calls[1].body);
  assert.ok(Date.now() - started >= 5, "waited");
});

test("BILLING_IN_PROGRESS twice is thrown after exactly one retry", async () => {
  const { fetch, calls } = stubFetch(json(409, { ok: false, code: "BILLING_IN_PROGRESS", message: "busy" }));
  const { c } = client(fetch);
  await assert.rejects(c.upgradePlan("pro"), (e) => e.code === "BILLING_IN_PROGRESS" && e.status === 409);
  assert.equal(calls.length, 2);
});

test("AUTH_REQUIRED is retried once with a refreshed token, then thrown", async () => {
  const denied = json(401, { ok: false, code: "AUTH_REQUIRED", message: "expired" });
  let s = stubFetch(denied, json(200, PLAN));
  let { c, tokens } = client(s.fetch);
  assert.equal((await c.getPlan()).plan, "free");
  assert.deepEqual(tokens, [false, true]);
  assert.equal(s.calls[0].headers.Authorization, "Bearer token");
  assert.equal(s.calls[1].headers.Authorization, "Bearer fresh-token");

  s = stubFetch(denied);
  ({ c } = client(s.fetch));
  await assert.rejects(c.getPlan(), (e) => e.code === "AUTH_REQUIRED" && e.status === 401);
  assert.equal(s.calls.length, 2);
});

test("no answer is NETWORK_ERROR, a slow one TIMEOUT, a non-JSON one BAD_RESPONSE", async () => {
  let { c } = client(stubFetch(new TypeError("fetch failed")).fetch);
  await assert.rejects(c.getPlan(), (e) => e.code === "NETWORK_ERROR" && e.status === 0);

  const hang = (_url, init) =>
    new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(new Error("aborted"))));
  ({ c } = client(stubFetch(hang).fetch, { timeoutMs: 20 }));
  await assert.rejects(c.getPlan(), (e) => e.code === "TIMEOUT" && e.status === 0);

  const text = new Response("Your worker restarted mid-request", { status: 503 });
  ({ c } = client(stubFetch(text).fetch));
  await assert.rejects(c.getPlan(), (e) => e.code === "BAD_RESPONSE" && e.status === 503);

  ({ c } = client(stubFetch(json(500, { unexpected: true })).fetch));
  await assert.rejects(c.getPlan(), (e) => e.code === "BAD_RESPONSE" && e.status === 500);
});

test("requests go to baseUrl with the bearer token; the public catalog is fetched without one", async () => {
  const { fetch, calls } = stubFetch(json(200, { ok: true, tiers: [], packs: [], creditCosts: {} }), json(200, PLAN));
  const { c } = client(fetch);
  await c.getPlans();
  await c.getPlan();
  assert.equal(calls[0].url, "https://api.example.test/api/plans");
  assert.equal(calls[0].headers.Authorization, undefined);
  assert.equal(calls[1].url, "https://api.example.test/api/plan/me");
  assert.equal(calls[1].method, "GET");
  assert.equal(calls[1].headers.Authorization, "Bearer token");
  assert.equal(c.plan.plan, "free");
});

test("a redirect is followed with location.assign and the button is busy meanwhile, then restored", async () => {
  const button = fakeButton();
  let seenBusy = null;
  const { fetch, calls } = stubFetch(() => {
    seenBusy = { disabled: button.disabled, aria: button.getAttribute("aria-busy"), text: button.textContent };
    return json(200, { ok: true, action: "redirect", url: "https://checkout.stripe.test/c/pay/cs_1" });
  });
  const location = fakeLocation();
  const { c } = client(fetch, { location });
  const answer = await c.upgradePlan("essential", { source: "pricing", button });
  assert.equal(answer.action, "redirect");
  assert.deepEqual(location.assigned, ["https://checkout.stripe.test/c/pay/cs_1"]);
  assert.deepEqual(seenBusy, { disabled: true, aria: "true", text: "Working…" });
  assert.deepEqual([button.disabled, button.getAttribute("aria-busy"), button.textContent], [false, null, "Upgrade"]);
  assert.deepEqual(calls[0].body, { targetPlan: "essential", returnUrl: "https://app.example.test/account", source: "pricing" });
});

test("a button that was disabled before stays disabled after", async () => {
  const button = fakeButton();
  button.disabled = true;
  const { c } = client(stubFetch(json(409, { ok: false, code: "ALREADY_ON_PLAN", message: "m" })).fetch);
  await assert.rejects(c.upgradePlan("pro", { button }));
  assert.equal(button.disabled, true);
});

test("an in-place upgrade reads the plan again and dispatches plangate:planchanged", async () => {
  const updated = { ok: true, action: "updated", plan: "pro", subscriptionId: "sub_1", customerId: "cus_1", pendingPayment: false };
  const { fetch, calls } = stubFetch(json(200, PLAN), json(200, updated), json(200, { ...PLAN, plan: "pro", subscriptionStatus: "active" }));
  const eventTarget = new EventTarget();
  const seen = [];
  eventTarget.addEventListener("plangate:planchanged", (e) => seen.push(e.detail));
  const { c } = client(fetch, { eventTarget });
  await c.getPlan();
  const answer = await c.upgradePlan("pro");
  assert.equal(answer.action, "updated");
  assert.deepEqual(calls.map((x) => `${x.method} ${new URL(x.url).pathname}`), [
    "GET /api/plan/me", "POST /api/upgrade-plan", "GET /api/plan/me",
  ]);
  assert.equal(seen.length, 1);
  assert.equal(seen[0].plan.plan, "pro");
  assert.equal(seen[0].previousPlan, "free");
  assert.equal(seen[0].action, "updated");
  assert.equal(c.plan.plan, "pro");
});

test("an in-place upgrade whose plan cannot be re-read still announces the new tier", async () => {
  const updated = { ok: true, action: "updated", plan: "pro", subscriptionId: "sub_1", customerId: "cus_1", pendingPayment: false };
  const { fetch } = stubFetch(json(200, updated), new TypeError("offline"));
  const eventTarget = new EventTarget();
  const seen = [];
  eventTarget.addEventListener("plangate:planchanged", (e) => seen.push(e.detail));
  const { c } = client(fetch, { eventTarget });
  await c.upgradePlan("pro");
  assert.equal(seen[0].plan.plan, "pro");
});

test("downgrade, cancel and resume announce the plan they answer", async () => {
  for (const [call, path, body, action] of [
    [(c) => c.downgradePlan("essential"), "/api/downgrade-plan", { targetPlan: "essential" }, "downgrade_scheduled"],
    [(c) => c.cancel(), "/api/cancel-subscription", {}, "cancel_scheduled"],
    [(c) => c.resume(), "/api/resume-subscription", {}, "resumed"],
  ]) {
    const { fetch, calls } = stubFetch(json(200, { ...PLAN, plan: "pro", action }));
    const eventTarget = new EventTarget();
    const seen = [];
    eventTarget.addEventListener("plangate:planchanged", (e) => seen.push(e.detail));
    const { c } = client(fetch, { eventTarget });
    await call(c);
    assert.equal(new URL(calls[0].url).pathname, path);
    assert.equal(calls[0].method, "POST");
    assert.deepEqual(calls[0].body, body);
    assert.equal(seen[0].action, action);
    assert.equal(c.plan.plan, "pro");
  }
});

test("the billing portal, a credit pack and the trial are followed to Stripe", async () => {
  for (const [call, path, body] of [
    [(c) => c.openBillingPortal(), "/api/billing-portal", { returnUrl: "https://app.example.test/account" }],
    [(c) => c.buyCredits("small"), "/api/credits/checkout", { pack: "small", returnUrl: "https://app.example.test/account" }],
    [(c) => c.startTrial({ returnUrl: "https://app.example.test/x" }), "/api/stripe-checkout", { plan: "trial", returnUrl: "https://app.example.test/x" }],
  ]) {
    const { fetch, calls } = stubFetch(json(200, { ok: true, url: "https://stripe.test/next" }));
    const location = fakeLocation();
    const { c } = client(fetch, { location });
    await call(c);
    assert.equal(new URL(calls[0].url).pathname, path);
    assert.deepEqual(calls[0].body, body);
    assert.deepEqual(location.assigned, ["https://stripe.test/next"]);
  }
});

test("consume sends a fresh idempotency key each time, or the one given", async () => {
  const ok = json(200, { ok: true, feature: "ats_score", used: 1, limit: 3, remaining: 2, resetsAt: "2026-12-01T00:00:00Z", replayed: false });
  const { fetch, calls } = stubFetch(ok);
  const { c } = client(fetch);
  await c.consume("ats_score");
  await c.consume("ats_score");
  await c.consume("ats_score", { amount: 2, idempotencyKey: "mine" });
  assert.equal(calls[0].body.feature, "ats_score");
  assert.equal(calls[0].body.amount, 1);
  assert.ok(calls[0].body.idempotencyKey.length >= 16);
  assert.notEqual(calls[0].body.idempotencyKey, calls[1].body.idempotencyKey);
  assert.deepEqual(calls[2].body, { feature: "ats_score", amount: 2, idempotencyKey: "mine" });
});

test("credits history pages pass limit and cursor", async () => {
  const { fetch, calls } = stubFetch(json(200, { ok: true, balance: 0, transactions: [], nextCursor: null }));
  const { c } = client(fetch);
  await c.getCredits({ limit: 5, cursor: "170.3" });
  await c.getCredits();
  assert.equal(calls[0].url, "https://api.example.test/api/credits?limit=5&cursor=170.3");
  assert.equal(calls[1].url, "https://api.example.test/api/credits");
});
