// Browser tests of the account page against the `make dev` stack (the Worker and the
// Stripe stand-in), in headless Chromium (Debian's, /usr/bin/chromium) driven by
// playwright-core, at a phone's width (375 px). Screenshots of the key states go to
// target/browser/. `make browser-test` (part of `make test`).

import { test, before, after, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

import { chromium } from "playwright-core";
import { startStack, ROOT } from "./stack.mjs";
import { errorMessage } from "../../public/client/plangate.js";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = join(ROOT, "target/browser");
const openapi = JSON.parse(readFileSync(join(ROOT, "public/openapi.json"), "utf8"));

let stack;
let browser;
let page;
let problems;
let n = 0;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  stack = await startStack();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

beforeEach(async () => {
  const context = await browser.newContext({ viewport: { width: 375, height: 812 }, deviceScaleFactor: 1 });
  page = await context.newPage();
  page.setDefaultTimeout(20000);
  problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  // The browser reports each 4xx/5xx answer as "Failed to load resource"; the page
  // handles those (that is what is tested). Anything else logged as an error counts.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push(`console: ${m.text()}`);
  });
});

afterEach(async () => {
  await page.context().close();
  assert.deepEqual(problems, [], "no errors in the console");
});

async function shot(name) {
  n += 1;
  await page.screenshot({ path: join(SHOTS, `${String(n).padStart(2, "0")}-${name}.png`), fullPage: true });
}

const unique = (label) => `${label}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;

async function signIn(label) {
  const user = unique(label);
  await page.goto(`${stack.base}/account`);
  await page.waitForSelector("#sign-in:not([hidden])");
  await page.fill("#dev-user", user);
  await page.click("#dev-sign-in button[type=submit]");
  await page.waitForSelector("#account:not([hidden])");
  return user;
}

const text = (sel) => page.textContent(sel).then((t) => t.trim());
const until = (fn, arg) => page.waitForFunction(fn, arg);

/** Clicks `selector`, lands on the stand-in's Checkout, pays, and is back on the account page. */
async function payAtCheckout(selector, shotName) {
  await Promise.all([page.waitForURL(`${stack.standin}/c/pay/**`), page.click(selector)]);
  await page.waitForSelector("text=Pay");
  if (shotName) await shot(shotName);
  await Promise.all([page.waitForURL(`${stack.base}/account/**`), page.click("button:text-is('Pay')")]);
  await page.waitForSelector("#account:not([hidden])");
}

test("a newcomer signs in as a dev user and sees the free plan, every tier and their usage", async () => {
  await page.goto(`${stack.base}/account`);
  assert.equal(new URL(page.url()).pathname, "/account/");
  await page.waitForSelector("#sign-in:not([hidden])");
  await shot("sign-in");
  const user = await signIn("newcomer");
  assert.equal(await text("#plan-name"), "Free");
  assert.match(await text("#who"), new RegExp(user));
  assert.equal(await page.isDisabled("#tier-free"), true, "the current tier is disabled");
  for (const tier of ["essential", "pro", "premium"]) assert.equal(await page.isEnabled(`#upgrade-${tier}`), true, tier);
  assert.equal(await page.isVisible("#trial-essential"), true, "the trial is offered");
  assert.equal(await page.isVisible("#cancel"), false);
  assert.match(await text("#usage"), /0 of 3 used/);
  await shot("free-plan");
});

test("free → essential through the stand-in's Checkout, then pro in place, a downgrade scheduled, cancel and resume", async () => {
  await signIn("upgrader");
  await payAtCheckout("#upgrade-essential", "stand-in-checkout");
  assert.equal(new URL(page.url()).search, "", "checkout=success is taken off the address");
  await until(() => document.querySelector("#plan-name").textContent === "Essential");
  assert.equal(await text("#plan-status"), "active");
  assert.match(await text("#status"), /Payment received/);
  assert.equal(await page.isDisabled("#upgrade-free"), true, "lower tiers are disabled");
  assert.equal(await page.isDisabled("#tier-essential"), true);
  await shot("essential-active");

  // In place: no Checkout, the page follows plangate:planchanged.
  await page.click("#upgrade-pro");
  await until(() => document.querySelector("#plan-name").textContent === "Pro");
  assert.equal(new URL(page.url()).host, new URL(stack.base).host, "no redirect");
  assert.match(await text("#status"), /now on Pro/);
  await until(() => /20 credits/.test(document.querySelector("#tiers").textContent));
  await shot("pro-in-place");

  await page.click("#downgrade-essential");
  await until(() => /Changes to Essential on/.test(document.querySelector("#plan-detail").textContent));
  assert.equal(await page.isDisabled("#downgrade-essential"), true, "already scheduled");
  await shot("downgrade-scheduled");

  await page.click("#cancel");
  await until(() => !document.querySelector("#resume").hidden);
  assert.match(await text("#plan-detail"), /ends on/);
  assert.match(await text("#status"), /Cancelled/);
  await shot("cancel-pending");
  await page.click("#resume");
  await until(() => !document.querySelector("#cancel").hidden);
  assert.match(await text("#status"), /continues/);
  assert.equal(await page.isVisible("#resume"), false);
});

test("trial → paid now: the trial's countdown, then Start paid now ends it", async () => {
  await signIn("trialist");
  await payAtCheckout("#trial-essential");
  await until(() => document.querySelector("#plan-name").textContent === "Essential (trial)");
  assert.equal(await text("#plan-status"), "trialing");
  assert.match(await text("#trial-countdown"), /ends in 2 days|ends in 3 days/);
  await shot("trialing");
  await page.click("#start-paid");
  await until(() => document.querySelector("#plan-status").textContent === "active");
  assert.equal(await page.isVisible("#trial"), false);
  assert.equal(await text("#plan-name"), "Essential");
  await shot("trial-paid-now");
});

test("the stand-in's billing portal cancels at the period end and the page shows it", async () => {
  await signIn("portal");
  await payAtCheckout("#upgrade-pro");
  await until(() => document.querySelector("#plan-name").textContent === "Pro");
  await Promise.all([page.waitForURL(`${stack.standin}/p/session/**`), page.click("#portal")]);
  await page.click("button:text-is('Cancel plan')");
  await page.waitForSelector("text=cancels at the period end");
  await shot("stand-in-portal");
  await Promise.all([page.waitForURL(`${stack.base}/account/**`), page.click("text=Return to the site")]);
  await until(() => !document.querySelector("#resume").hidden);
  assert.match(await text("#plan-detail"), /ends on/);
});

test("a quota used up says so, with when it resets", async () => {
  await signIn("quota");
  await page.click("#use-resume_feedback");
  await until(() => /used once/.test(document.querySelector("#status").textContent));
  await page.click("#use-resume_feedback");
  await until(() => !document.querySelector("#alert").hidden);
  const alert = await text("#alert");
  assert.match(alert, /allowance/);
  assert.match(alert, /used 1 of 1/);
  assert.match(alert, /resets on/);
  assert.equal(await page.getAttribute("#alert", "role"), "alert");
  await shot("quota-exhausted");
});

test("a credit pack bought at the stand-in's Checkout shows in the balance and the history", async () => {
  await signIn("credits");
  await payAtCheckout("#buy-small", "stand-in-pack-checkout");
  await until(() => document.querySelector("#balance").textContent === "100");
  assert.match(await text("#history"), /Credit pack/);
  assert.match(await text("#history"), /\+100/);
  await page.click("#use-job_analysis");
  await until(() => document.querySelector("#balance").textContent === "90");
  await shot("credits-bought");
});

test("at 375 px nothing scrolls sideways, and the keyboard reaches and works every control", async () => {
  await signIn("keyboard");
  const widths = await page.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
  assert.ok(widths[0] <= widths[1], `no horizontal scroll: ${widths}`);
  const small = await page.evaluate(() =>
    [...document.querySelectorAll("button:not([hidden])")]
      .filter((b) => b.offsetParent !== null && b.getBoundingClientRect().height < 36)
      .map((b) => b.id || b.textContent),
  );
  assert.deepEqual(small, [], "every button is a comfortable target");

  // Tab from the top to "Use once" of resume feedback, then Enter.
  await page.focus("body");
  const seen = [];
  for (let i = 0; i < 60; i++) {
    await page.keyboard.press("Tab");
    const id = await page.evaluate(() => document.activeElement.id || document.activeElement.textContent.trim());
    seen.push(id);
    if (id === "use-resume_feedback") break;
  }
  assert.equal(seen.at(-1), "use-resume_feedback", `tab order: ${seen.join(", ")}`);
  assert.ok(seen.includes("upgrade-pro") && seen.includes("portal"), `tab order: ${seen.join(", ")}`);
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert.notEqual(outline, "none", "the focused control is visibly marked");
  await page.keyboard.press("Enter");
  await until(() => /used once/.test(document.querySelector("#status").textContent));
  assert.equal(await page.evaluate(() => document.activeElement.id), "use-resume_feedback", "focus stays after re-render");
  await shot("keyboard");

  // And a redirect from the keyboard: Enter on "Upgrade to Pro" opens the Checkout.
  await page.focus("#upgrade-pro");
  await Promise.all([page.waitForURL(`${stack.standin}/c/pay/**`), page.keyboard.press("Enter")]);
  // "Pay" has autofocus: Tab from it once the page has applied it (else Tab lands on "Pay").
  await page.waitForFunction(() => document.activeElement?.textContent === "Pay");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "Cancel");
  await Promise.all([page.waitForURL(`${stack.base}/account/**`), page.keyboard.press("Enter")]);
  await until(() => /Checkout cancelled/.test(document.querySelector("#status").textContent));
});

test("every error code the API answers is shown as its own sentence", async () => {
  await signIn("errors");
  const codes = openapi.components.schemas.ErrorCode.enum;
  for (const code of codes) {
    await page.route("**/api/upgrade-plan", (route) =>
      route.fulfill({
        status: 409,
        contentType: "application/json",
        body: JSON.stringify({ ok: false, code, message: "raw API text", ...(code === "ALREADY_SUBSCRIBED" ? { plan: "pro" } : {}) }),
      }),
    );
    await page.click("#upgrade-premium");
    await until((c) => document.querySelector("#alert").textContent.length > 0 && !document.querySelector("#alert").hidden && document.querySelector("#upgrade-premium").getAttribute("aria-busy") === null, code);
    const alert = await text("#alert");
    assert.ok(alert.startsWith(errorMessage(code)), `${code}: ${alert}`);
    if (code === "ALREADY_SUBSCRIBED") assert.match(alert, /Pro/);
    await page.unroute("**/api/upgrade-plan");
    if (code === "AUTH_REQUIRED") {
      // The page signs out on AUTH_REQUIRED: sign in again for the next codes.
      await page.waitForSelector("#sign-in:not([hidden])");
      await page.click("#dev-sign-in button[type=submit]");
      await page.waitForSelector("#account:not([hidden])");
    }
    await page.evaluate(() => {
      document.querySelector("#alert").textContent = "";
    });
  }
  assert.ok(codes.length >= 36);
});
