// Types of /client/plangate.js, the plangate browser client. The API itself is
// described by /openapi.json.

/** Every code the API answers (see the ErrorCode schema of /openapi.json). */
export type ApiErrorCode =
  | "AUTH_REQUIRED"
  | "FORBIDDEN"
  | "NOT_FOUND"
  | "METHOD_NOT_ALLOWED"
  | "PAYLOAD_TOO_LARGE"
  | "INVALID_REQUEST"
  | "INVALID_SIGNATURE"
  | "INVALID_PAYLOAD"
  | "ALREADY_PROCESSED"
  | "WEBHOOK_NOT_CONFIGURED"
  | "WEBHOOK_FAILED"
  | "WEBHOOK_RETRY_LATER"
  | "INVALID_PLAN"
  | "ALREADY_ON_PLAN"
  | "DOWNGRADE_NOT_ALLOWED"
  | "NOT_A_DOWNGRADE"
  | "ALREADY_SUBSCRIBED"
  | "PAYMENT_PENDING"
  | "TRIAL_ALREADY_USED"
  | "NO_ACTIVE_SUBSCRIPTION"
  | "BILLING_IN_PROGRESS"
  | "CUSTOMER_NOT_FOUND"
  | "CUSTOMER_MISSING"
  | "CUSTOMER_RECORD_NOT_FOUND"
  | "SUBSCRIPTION_ITEM_MISSING"
  | "UPDATE_FAILED"
  | "CHECKOUT_FAILED"
  | "PORTAL_FAILED"
  | "LEGACY_RECORD_UNREADABLE"
  | "SERVER_ERROR"
  | "QUOTA_EXCEEDED"
  | "FEATURE_NOT_IN_PLAN"
  | "INSUFFICIENT_CREDITS"
  | "UNKNOWN_FEATURE"
  | "UNKNOWN_PACK"
  | "PACK_NOT_AVAILABLE"
  | "IDEMPOTENCY_KEY_REUSED"
  | "REASON_REQUIRED"
  | "USER_NOT_FOUND"
  | "CUSTOMER_EXISTS"
  | "FIELD_NOT_WRITABLE"
  | "INVALID_CSV"
  | "FILES_MISSING"
  | "PURGE_INCOMPLETE";

/** Codes the client produces itself: no answer (NETWORK_ERROR, TIMEOUT; status 0) or not JSON. */
export type ClientErrorCode = "NETWORK_ERROR" | "TIMEOUT" | "BAD_RESPONSE";
export type ErrorCode = ApiErrorCode | ClientErrorCode;

export declare const CLIENT_CODES: readonly ClientErrorCode[];
/** Every code `errorMessage` has a sentence for. */
export declare const KNOWN_CODES: readonly ErrorCode[];

/** The error body; some codes add fields. */
export interface ErrorBody {
  ok: false;
  code: ApiErrorCode;
  message: string;
  /** ALREADY_SUBSCRIBED */
  plan?: string;
  /** PAYMENT_PENDING */
  subscriptionStatus?: string;
  /** PAYMENT_PENDING: where to pay the open invoice */
  invoiceUrl?: string;
  /** QUOTA_EXCEEDED, FEATURE_NOT_IN_PLAN */
  feature?: string;
  /** QUOTA_EXCEEDED */
  limit?: number | null;
  used?: number;
  resetsAt?: string;
  replayed?: boolean;
  /** INSUFFICIENT_CREDITS */
  balance?: number;
  required?: number;
  /** WEBHOOK_RETRY_LATER */
  retryAfter?: number;
}

export declare class PlangateError extends Error {
  name: "PlangateError";
  code: ErrorCode;
  /** HTTP status; 0 when no answer arrived. */
  status: number;
  message: string;
  /** ALREADY_SUBSCRIBED: the plan of the live subscription; else null. */
  plan: string | null;
  /** The whole error body (null when the answer was not JSON). */
  details: ErrorBody | null;
  /** X-Request-Id of the answer: quote it when reporting a problem. */
  requestId: string | null;
  constructor(init: { code: ErrorCode; status: number; message?: string; body?: ErrorBody | null; requestId?: string | null });
}

/** A user-facing sentence for an error, a code, or anything else (a generic one). */
export declare function errorMessage(error: PlangateError | ErrorCode | string | unknown): string;

export type TierId = "free" | "essential" | "pro" | "premium";
export type PaidTierId = Exclude<TierId, "free">;
/** A tier, or "trial" while the subscription is trialing. */
export type PlanId = TierId | "trial";
/** ISO 8601 UTC, e.g. "2026-11-24T11:27:18Z". */
export type Time = string;

export interface PlanView {
  ok: true;
  plan: PlanId;
  subscriptionStatus: string | null;
  trialEndsAt: Time | null;
  currentPeriodEnd: Time | null;
  cancelAt: Time | null;
  scheduledPlan: string | null;
  scheduledAt: Time | null;
  planUpdatedAt: Time;
}

export interface PlanActionResult extends PlanView {
  action: "cancel_scheduled" | "resumed" | "downgrade_scheduled";
}

export interface Tier {
  id: TierId;
  name: string;
  rank: number;
  trialDays: number;
  features: string[];
  limits: { feature: string; monthly: number | null }[];
  creditsPerPeriod: number;
}

export interface Catalog {
  ok: true;
  tiers: Tier[];
  packs: { id: string; name: string; credits: number; available: boolean }[];
  creditCosts: Record<string, number>;
}

export interface UsageEntry {
  limit: number | null;
  used: number;
  remaining: number | null;
  resetsAt: Time;
}

export interface Period {
  kind: "subscription" | "month";
  start: Time;
  end: Time;
}

export interface Entitlements {
  ok: true;
  plan: PlanId;
  tier: TierId;
  subscriptionStatus: string | null;
  trial: { active: boolean; endsAt: Time | null; used: boolean };
  features: Record<string, boolean>;
  usage: Record<string, UsageEntry>;
  credits: { balance: number };
  period: Period;
}

export interface Usage {
  ok: true;
  period: Period;
  usage: Record<string, UsageEntry>;
}

export interface CreditTransaction {
  id: string;
  delta: number;
  reason: "purchase" | "grant" | "spend" | "refund" | "migration" | "adjustment";
  createdAt: Time;
  metadata: Record<string, unknown> | null;
}

export interface CreditsPage {
  ok: true;
  balance: number;
  transactions: CreditTransaction[];
  nextCursor: string | null;
}

export type UpgradeResult =
  | { ok: true; action: "redirect"; url: string }
  | { ok: true; action: "updated"; plan: TierId; subscriptionId: string; customerId: string; pendingPayment: boolean };

export type ConsumeResult =
  | { ok: true; feature: string; used: number; limit: number | null; remaining: number | null; resetsAt: Time; replayed: boolean }
  | { ok: true; feature: string; credits: { spent: number; balance: number }; replayed: boolean };

export interface RedirectResult {
  ok: true;
  url: string;
  action?: "redirect";
  sessionId?: string;
}

/** Something the client marks busy while a call runs (a button). */
export interface BusyTarget {
  disabled: boolean;
  textContent: string | null;
  setAttribute?(name: string, value: string): void;
  removeAttribute?(name: string): void;
  /** `data-loading-text`: shown while busy. */
  dataset?: { loadingText?: string };
}

export interface PlanChangedDetail {
  plan: PlanView;
  previousPlan: PlanId | null;
  action: "updated" | PlanActionResult["action"] | null;
}

export interface PlangateOptions {
  /** Where plangate is served; "" (default) = this page's origin. */
  baseUrl?: string;
  /** The user's ID token, e.g. `(refresh) => firebaseUser.getIdToken(refresh)`; called with `true` once after a 401. */
  getToken: (forceRefresh?: boolean) => string | null | undefined | Promise<string | null | undefined>;
  /** Defaults to the global fetch. */
  fetch?: typeof fetch;
  /** The wait before the one retry of BILLING_IN_PROGRESS (ms, default 1000). */
  retryDelayMs?: number;
  /** Per request (ms, default 30000; 0 = none). */
  timeoutMs?: number;
  /** Where redirects go (`assign`) and the default returnUrl (`href`); default `window.location`. */
  location?: { href: string; assign(url: string): void };
  /** Where `plangate:planchanged` is dispatched; default `window`. */
  eventTarget?: EventTarget | null;
}

export interface PlangateClient {
  /** The last plan seen (getPlan or a billing action). */
  plan: PlanView | null;
  getPlan(): Promise<PlanView>;
  getPlans(): Promise<Catalog>;
  getEntitlements(): Promise<Entitlements>;
  getUsage(): Promise<Usage>;
  getCredits(page?: { limit?: number; cursor?: string }): Promise<CreditsPage>;
  /**
   * No subscription: goes to Stripe Checkout (`location.assign`). Active: changed in place,
   * then the plan is read again and `plangate:planchanged` dispatched. Trialing: paid now.
   */
  upgradePlan(
    targetPlan: PaidTierId,
    options?: { source?: string; returnUrl?: string; button?: BusyTarget | null },
  ): Promise<UpgradeResult>;
  /** The entry tier's trial through Checkout (once per user). */
  startTrial(options?: { returnUrl?: string; button?: BusyTarget | null }): Promise<RedirectResult>;
  /** From the end of the period; "free" = cancel at the period end. Dispatches `plangate:planchanged`. */
  downgradePlan(targetPlan: TierId, options?: { button?: BusyTarget | null }): Promise<PlanActionResult>;
  cancel(options?: { button?: BusyTarget | null }): Promise<PlanActionResult>;
  resume(options?: { button?: BusyTarget | null }): Promise<PlanActionResult>;
  /** Goes to the Stripe billing portal. */
  openBillingPortal(options?: { returnUrl?: string; button?: BusyTarget | null }): Promise<RedirectResult>;
  /** Goes to Stripe Checkout for a credit pack; credits arrive with the payment. */
  buyCredits(pack: string, options?: { returnUrl?: string; button?: BusyTarget | null }): Promise<RedirectResult>;
  /** Counts a use, once per idempotency key (a fresh one unless given). */
  consume(feature: string, options?: { amount?: number; idempotencyKey?: string }): Promise<ConsumeResult>;
}

export declare function createPlangate(options: PlangateOptions): PlangateClient;

declare global {
  interface WindowEventMap {
    "plangate:planchanged": CustomEvent<PlanChangedDetail>;
  }
}
