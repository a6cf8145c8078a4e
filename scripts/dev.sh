#!/usr/bin/env bash
# `make dev`: the Worker on http://127.0.0.1:$PORT with its static pages and, unless
# .dev.vars holds a real Stripe test key, the Stripe stand-in on 127.0.0.1:$STANDIN_PORT
# (target/debug/examples/stripe-standin: Checkout and portal pages, signed webhooks).
set -euo pipefail
PORT=${PORT:-8787}
STANDIN_PORT=${STANDIN_PORT:-12111}
value() { sed -n "s/^$1=//p" .dev.vars | tail -n 1; }
key=$(value STRIPE_SECRET_KEY)
secret=$(value STRIPE_WEBHOOK_SECRET)
vars=()
if [[ -z "$key" || "$key" == "sk_test_placeholder" ]]; then
  if [[ -z "$secret" ]]; then
    echo "error: .dev.vars has no STRIPE_WEBHOOK_SECRET (the stand-in signs its webhooks with it)" >&2
    exit 1
  fi
  target/debug/examples/stripe-standin --port "$STANDIN_PORT" --worker "http://127.0.0.1:$PORT" \
    --webhook-secret "$secret" &
  standin=$!
  trap 'kill "$standin" 2>/dev/null || true' EXIT
  sleep 0.5
  if ! kill -0 "$standin" 2>/dev/null; then
    echo "error: the Stripe stand-in did not start (port $STANDIN_PORT in use? make dev STANDIN_PORT=…)" >&2
    exit 1
  fi
  vars=(--var "STRIPE_API_BASE:http://127.0.0.1:$STANDIN_PORT" --var "STRIPE_SECRET_KEY:sk_test_standin")
  stripe="the Stripe stand-in on http://127.0.0.1:$STANDIN_PORT (no Stripe account: Checkout has a Pay button)"
else
  stripe="Stripe's test mode (the key in .dev.vars); forward its webhooks with
            stripe listen --forward-to http://127.0.0.1:$PORT/api/stripe-webhook"
fi
# The account page's own origin must be allowed (its returnUrl), whatever the port.
if [[ -z "$(value ALLOWED_ORIGINS)" ]]; then
  vars+=(--var "ALLOWED_ORIGINS:http://127.0.0.1:$PORT,http://localhost:$PORT,http://localhost:3000,http://127.0.0.1:3000")
fi
cat <<MSG

  plangate on http://127.0.0.1:$PORT
    account page:  http://127.0.0.1:$PORT/account/   (sign in as any user id, upgrade, cancel…)
    API document:  http://127.0.0.1:$PORT/openapi.json
    billing with:  $stripe
    token:         make token USER=alice
    cron:          curl "http://127.0.0.1:$PORT/__scheduled?cron=*/5+*+*+*+*"

MSG
wrangler dev --local --ip 127.0.0.1 --port "$PORT" --test-scheduled "${vars[@]}"
