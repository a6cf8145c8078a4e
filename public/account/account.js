// The account page: plan and status, trial countdown, upgrades and downgrades, cancel
// and resume, the billing portal, usage per feature, credits. No framework: the
// plangate client (../client/plangate.js) and DOM calls; API text is only ever set as
// text, never as HTML.

import { createPlangate, errorMessage } from "../client/plangate.js";
import * as auth from "./auth.js";

const $ = (id) => document.getElementById(id);
const LIVE = ["active", "trialing", "past_due"];

const plangate = createPlangate({ getToken: (refresh) => auth.getToken(refresh) });

const state = {
  catalog: null,
  ent: null,
  plan: null,
  history: [],
  nextCursor: null,
  development: false,
  /** Actions started (and loads): a wait for a webhook stops when the user acts. */
  actions: 0,
};

// ---------------------------------------------------------------------------------
// Small helpers

function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "disabled" || k === "hidden") el[k] = Boolean(v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const day = (iso) => (iso ? dateFormat.format(new Date(iso)) : "");
const dayTime = (iso) => (iso ? dateTimeFormat.format(new Date(iso)) : "");
const WORDS = { ats: "ATS", linkedin: "LinkedIn" };
const humanize = (id) =>
  id
    .split("_")
    .map((w) => WORDS[w] || w)
    .join(" ")
    .replace(/^./, (c) => c.toUpperCase());

function tierName(id) {
  const t = state.catalog?.tiers.find((x) => x.id === id);
  return t ? t.name : id ? humanize(id) : "";
}

function rankOf(id) {
  return state.catalog?.tiers.find((x) => x.id === id)?.rank ?? 0;
}

const live = () => LIVE.includes(state.plan?.subscriptionStatus);

// ---------------------------------------------------------------------------------
// Messages: one polite status line, one alert for errors.

function say(text) {
  $("alert").hidden = true;
  $("alert").textContent = "";
  $("status").textContent = text;
}

function explain(e) {
  const d = e && e.details ? e.details : {};
  const parts = [errorMessage(e)];
  switch (e && e.code) {
    case "ALREADY_SUBSCRIBED":
      if (e.plan) parts.push(`Your current plan is ${tierName(e.plan) || e.plan}.`);
      break;
    case "QUOTA_EXCEEDED":
      if (d.limit != null) parts.push(`You have used ${d.used} of ${d.limit}.`);
      if (d.resetsAt) parts.push(`It resets on ${day(d.resetsAt)}.`);
      break;
    case "INSUFFICIENT_CREDITS":
      if (d.required != null) parts.push(`It needs ${d.required} credits; you have ${d.balance}.`);
      break;
    case "FEATURE_NOT_IN_PLAN":
      if (d.feature) parts.push(`(${humanize(d.feature)} is not in ${tierName(d.plan) || "your plan"}.)`);
      break;
    case "PAYMENT_PENDING":
      if (d.subscriptionStatus) parts.push(`Subscription status: ${d.subscriptionStatus}.`);
      break;
    default:
  }
  if (e && e.status >= 500 && e.requestId) parts.push(`Reference: ${e.requestId}.`);
  return parts.join(" ");
}

function showAlert(text) {
  $("status").textContent = "";
  $("alert").textContent = text;
  $("alert").hidden = false;
}

function fail(e) {
  showAlert(explain(e));
  const alert = $("alert");
  if (e && e.code === "PAYMENT_PENDING" && e.details?.invoiceUrl) {
    alert.append(" ", h("a", { href: e.details.invoiceUrl, text: "Pay the open invoice" }), ".");
  }
  if (e && e.code === "AUTH_REQUIRED") {
    auth.signOut();
    showSignIn();
  }
}

/** Runs an action; its errors become the alert. */
async function attempt(action) {
  state.actions += 1;
  try {
    return await action();
  } catch (e) {
    fail(e);
    return undefined;
  }
}

// ---------------------------------------------------------------------------------
// Signing in

function showSignIn() {
  $("sign-in").hidden = false;
  $("account").hidden = true;
  $("who").hidden = true;
  $("sign-out").hidden = true;
  $("dev-sign-in").hidden = !auth.devSignIn;
  $("token-sign-in").hidden = !auth.useToken;
}

function showAccount() {
  $("sign-in").hidden = true;
  $("account").hidden = false;
  const who = auth.currentUser();
  $("who").textContent = who ? `Signed in as ${who}` : "";
  $("who").hidden = !who;
  $("sign-out").hidden = false;
}

// ---------------------------------------------------------------------------------
// Loading

async function load() {
  if (!auth.getToken()) {
    showSignIn();
    return;
  }
  const [catalog, ent, plan, credits] = await Promise.all([
    state.catalog ? state.catalog : plangate.getPlans(),
    plangate.getEntitlements(),
    plangate.getPlan(),
    plangate.getCredits({ limit: 10 }),
  ]);
  Object.assign(state, { catalog, ent, plan, history: credits.transactions, nextCursor: credits.nextCursor });
  showAccount();
  render();
}

async function reload() {
  await attempt(load);
}

// ---------------------------------------------------------------------------------
// Rendering. Focus survives re-rendering: elements have stable ids.

function render() {
  const focused = document.activeElement && document.activeElement.id;
  renderPlan();
  renderTiers();
  renderUsage();
  renderCredits();
  if (focused && document.activeElement !== $(focused)) {
    const again = $(focused);
    if (again && !again.disabled && !again.hidden) again.focus();
  }
}

function renderPlan() {
  const { ent, plan } = state;
  const trialing = plan.plan === "trial";
  $("plan-name").textContent = trialing ? `${tierName(ent.tier)} (trial)` : tierName(ent.tier);
  const status = plan.subscriptionStatus || "no subscription";
  $("plan-status").textContent = status.replace(/_/g, " ");
  $("plan-status").className = `pill ${plan.subscriptionStatus || ""}`;

  let detail = "";
  if (plan.cancelAt) {
    detail = `Your subscription ends on ${day(plan.cancelAt)}; you keep ${tierName(ent.tier)} until then.`;
  } else if (plan.scheduledPlan && plan.scheduledAt) {
    detail = `Changes to ${tierName(plan.scheduledPlan)} on ${day(plan.scheduledAt)}.`;
  } else if (plan.subscriptionStatus === "past_due") {
    detail = "Your last payment failed: update your payment method in Manage billing.";
  } else if (live() && plan.currentPeriodEnd && !trialing) {
    detail = `Renews on ${day(plan.currentPeriodEnd)}.`;
  } else if (!live()) {
    detail = "Upgrade for more of every feature.";
  }
  $("plan-detail").textContent = detail;

  const trialEnds = ent.trial.active ? ent.trial.endsAt || plan.trialEndsAt : null;
  $("trial").hidden = !trialEnds;
  if (trialEnds) updateCountdown(trialEnds);

  $("cancel").hidden = !live() || Boolean(plan.cancelAt);
  $("resume").hidden = !(live() && plan.cancelAt);
}

function updateCountdown(endsAt) {
  const left = new Date(endsAt).getTime() - Date.now();
  const el = $("trial-countdown");
  if (left <= 0) {
    el.textContent = "Your trial has ended; your plan updates in a moment.";
    return;
  }
  const d = Math.floor(left / 86400000);
  const hrs = Math.floor((left % 86400000) / 3600000);
  const min = Math.floor((left % 3600000) / 60000);
  const span = d > 0 ? `${d} day${d === 1 ? "" : "s"}, ${hrs} hour${hrs === 1 ? "" : "s"}` : `${hrs} h ${min} min`;
  el.textContent = `Your free trial ends in ${span} (${dayTime(endsAt)}). Start paying now to keep ${tierName(state.ent.tier)} without a break.`;
}

function renderTiers() {
  const { catalog, ent, plan } = state;
  const current = rankOf(ent.tier);
  const trialOpen = !ent.trial.used && !live();
  const items = [...catalog.tiers]
    .sort((a, b) => a.rank - b.rank)
    .map((t) => {
      const limits = new Map(t.limits.map((l) => [l.feature, l.monthly]));
      const features = t.features.map((f) => {
        const cost = catalog.creditCosts[f];
        const limit = limits.get(f);
        const what = cost ? `${cost} credits per use` : limit == null ? "unlimited" : `${limit} per period`;
        return h("li", { text: `${humanize(f)}: ${what}` });
      });
      if (t.creditsPerPeriod) features.push(h("li", { text: `${t.creditsPerPeriod} credits every period` }));
      const buttons = [];
      if (t.rank === current) {
        buttons.push(h("button", { type: "button", id: `tier-${t.id}`, disabled: true, text: "Current plan" }));
      } else if (t.rank > current) {
        buttons.push(
          h("button", {
            type: "button", id: `upgrade-${t.id}`, "data-loading-text": "Upgrading…",
            text: `Upgrade to ${t.name}`, onclick: (ev) => upgrade(t, ev.currentTarget),
          }),
        );
        if (trialOpen && t.trialDays > 0) {
          buttons.push(
            h("button", {
              type: "button", id: `trial-${t.id}`, class: "secondary", "data-loading-text": "Opening…",
              text: `Start ${t.trialDays}-day free trial`, onclick: (ev) => startTrial(ev.currentTarget),
            }),
          );
        }
      } else {
        buttons.push(h("button", { type: "button", id: `upgrade-${t.id}`, disabled: true, text: `Upgrade to ${t.name}` }));
        if (live()) {
          const scheduled = t.rank === 0 ? Boolean(plan.cancelAt) : plan.scheduledPlan === t.id;
          buttons.push(
            h("button", {
              type: "button", id: `downgrade-${t.id}`, class: "secondary", disabled: scheduled,
              "data-loading-text": "Scheduling…",
              text: scheduled ? `${t.name} from ${day(plan.cancelAt || plan.scheduledAt)}` : `Switch to ${t.name} at period end`,
              onclick: (ev) => downgrade(t, ev.currentTarget),
            }),
          );
        }
      }
      return h(
        "li",
        { class: t.rank === current ? "tier current" : "tier", "aria-current": t.rank === current ? "true" : null },
        h("h3", { text: t.name }),
        t.trialDays ? h("p", { class: "muted", text: `${t.trialDays}-day free trial available` }) : null,
        h("ul", {}, features),
        h("div", { class: "buttons" }, buttons),
      );
    });
  $("tiers").replaceChildren(...items);
}

function renderUsage() {
  const { ent, catalog } = state;
  $("period").textContent =
    `${ent.period.kind === "subscription" ? "Billing period" : "This month"}: ${day(ent.period.start)} – ${day(ent.period.end)}.`;
  const rows = Object.entries(ent.usage).map(([feature, u]) => {
    const name = humanize(feature);
    const full = u.limit != null && u.used >= u.limit;
    const text = u.limit == null ? `${u.used} used · unlimited` : `${u.used} of ${u.limit} used`;
    const bar =
      u.limit == null
        ? null
        : h(
            "div",
            {
              class: full ? "bar full" : "bar", role: "progressbar", "aria-label": `${name} usage`,
              "aria-valuemin": 0, "aria-valuemax": u.limit, "aria-valuenow": Math.min(u.used, u.limit),
            },
            h("span", { style: `width: ${u.limit ? Math.min(100, (100 * u.used) / u.limit) : 100}%` }),
          );
    return h(
      "li",
      { id: `usage-${feature}` },
      h("div", { class: "label" }, h("strong", { text: name }), h("span", { text })),
      bar,
      h(
        "div",
        { class: "label muted" },
        h("span", { text: `Resets on ${day(u.resetsAt)}` }),
        state.development
          ? h("button", {
              type: "button", class: "secondary use", id: `use-${feature}`, text: "Use once",
              title: "Development: count one use", onclick: () => use(feature),
            })
          : null,
      ),
    );
  });
  const missing = Object.entries(ent.features).filter(([, on]) => !on).map(([f]) => humanize(f));
  if (missing.length) rows.push(h("li", { class: "muted", text: `Not in your plan: ${missing.join(", ")}.` }));
  $("usage").replaceChildren(...rows);

  const costs = Object.entries(catalog.creditCosts).filter(([f]) => ent.features[f]);
  $("costs").replaceChildren(
    ...costs.map(([f, cost]) =>
      h(
        "span",
        {},
        `${humanize(f)} costs ${cost} credits per use. `,
        state.development
          ? h("button", { type: "button", class: "secondary use", id: `use-${f}`, text: "Use once", onclick: () => use(f) })
          : null,
      ),
    ),
  );
}

const REASONS = {
  purchase: "Credit pack",
  grant: "Included with your plan",
  spend: "Used",
  refund: "Refund",
  migration: "Carried over",
  adjustment: "Adjustment",
};

function renderCredits() {
  const { ent, catalog, history, nextCursor } = state;
  $("balance").textContent = String(ent.credits.balance);
  $("packs").replaceChildren(
    ...[...catalog.packs].sort((a, b) => a.credits - b.credits).map((p) =>
      h(
        "li",
        {},
        h("button", {
          type: "button", id: `buy-${p.id}`, disabled: !p.available, "data-loading-text": "Opening…",
          text: p.available ? `Buy ${p.name} (${p.credits} credits)` : `${p.name}: not for sale here`,
          onclick: (ev) => buy(p, ev.currentTarget),
        }),
      ),
    ),
  );
  const rows = history.map((t) => {
    const what = t.metadata && t.metadata.pack ? `${REASONS[t.reason]}: ${t.metadata.pack}` : REASONS[t.reason] || t.reason;
    return h(
      "tr",
      {},
      h("td", { text: day(t.createdAt) }),
      h("td", { text: what }),
      h("td", { class: "num", text: t.delta > 0 ? `+${t.delta}` : `−${-t.delta}` }),
    );
  });
  $("history").querySelector("tbody").replaceChildren(...rows);
  $("history").hidden = rows.length === 0;
  $("history-empty").hidden = rows.length > 0;
  $("history-more").hidden = !nextCursor;
}

// ---------------------------------------------------------------------------------
// Actions

async function upgrade(tier, button) {
  await attempt(async () => {
    const answer = await plangate.upgradePlan(tier.id, { source: "account", button });
    if (answer.action === "redirect") say(`Opening the checkout for ${tier.name}…`);
    else say(answer.pendingPayment ? `${tier.name}: the payment is being collected.` : `You are now on ${tier.name}.`);
  });
}

async function startTrial(button) {
  await attempt(async () => {
    await plangate.startTrial({ button });
    say("Opening the checkout for your free trial…");
  });
}

async function downgrade(tier, button) {
  await attempt(async () => {
    const answer = await plangate.downgradePlan(tier.id, { button });
    const when = day(answer.scheduledAt || answer.cancelAt);
    say(tier.rank === 0 ? `Your subscription ends on ${when}.` : `You switch to ${tier.name} on ${when}.`);
  });
}

async function use(feature) {
  await attempt(async () => {
    const answer = await plangate.consume(feature);
    if (answer.credits) say(`${humanize(feature)}: ${answer.credits.spent} credits used, ${answer.credits.balance} left.`);
    else say(`${humanize(feature)} used once${answer.remaining == null ? "" : `: ${answer.remaining} left`}.`);
    await load();
  });
}

async function buy(pack, button) {
  await attempt(async () => {
    await plangate.buyCredits(pack.id, { button });
    say(`Opening the checkout for ${pack.name}…`);
  });
}

// ---------------------------------------------------------------------------------
// Wiring

function wire() {
  $("start-paid").addEventListener("click", (ev) => upgrade({ id: state.ent.tier, name: tierName(state.ent.tier) }, ev.currentTarget));
  $("cancel").addEventListener("click", (ev) =>
    attempt(async () => {
      const answer = await plangate.cancel({ button: ev.currentTarget });
      say(`Cancelled: you keep your plan until ${day(answer.cancelAt)}.`);
    }),
  );
  $("resume").addEventListener("click", (ev) =>
    attempt(async () => {
      await plangate.resume({ button: ev.currentTarget });
      say("Your subscription continues.");
    }),
  );
  $("portal").addEventListener("click", (ev) =>
    attempt(async () => {
      await plangate.openBillingPortal({ button: ev.currentTarget });
      say("Opening billing…");
    }),
  );
  $("history-more").addEventListener("click", () =>
    attempt(async () => {
      const page = await plangate.getCredits({ limit: 10, cursor: state.nextCursor });
      state.history.push(...page.transactions);
      state.nextCursor = page.nextCursor;
      renderCredits();
    }),
  );
  $("sign-out").addEventListener("click", () => {
    auth.signOut();
    say("Signed out.");
    showSignIn();
  });
  $("dev-sign-in").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const button = ev.currentTarget.querySelector("button");
    button.disabled = true;
    try {
      await auth.devSignIn($("dev-user").value.trim());
      say("");
      await reload();
    } catch (e) {
      if (e.code === "NOT_FOUND") showAlert("Development sign-in is off here: the Worker does not run with ENVIRONMENT=development.");
      else fail(e);
    } finally {
      button.disabled = false;
    }
  });
  $("token-sign-in").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    auth.useToken($("token").value);
    $("token").value = "";
    say("");
    await reload();
  });
  addEventListener("plangate:planchanged", () => reload());
  setInterval(() => {
    if (!$("trial").hidden && state.ent?.trial.endsAt) updateCountdown(state.ent.trial.endsAt);
  }, 30000);
}

/** Back from Stripe: say what happened; the webhook may still be on its way, so look again a few times. */
async function checkoutReturn() {
  const url = new URL(location.href);
  const outcome = url.searchParams.get("checkout");
  if (!outcome) return;
  url.searchParams.delete("checkout");
  history.replaceState(null, "", url.pathname + url.search + url.hash);
  if (outcome === "cancel") {
    say("Checkout cancelled: nothing was charged.");
    return;
  }
  say("Payment received. Your account updates in a moment.");
  const before = JSON.stringify([state.plan, state.ent?.credits]);
  for (let i = 0; i < 6; i++) {
    await new Promise((r) => setTimeout(r, 1500));
    const acted = state.actions;
    await load().catch(() => {});
    if (state.actions !== acted) return;
    if (JSON.stringify([state.plan, state.ent?.credits]) !== before) {
      say("Payment received: your account is up to date.");
      return;
    }
  }
}

async function start() {
  wire();
  try {
    const health = await fetch("/health").then((r) => r.json());
    state.development = health.environment === "development";
  } catch {
    state.development = false;
  }
  await reload();
  await checkoutReturn();
}

start();
