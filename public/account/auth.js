// How the account page gets the signed-in user's ID token.
//
// This one is for development: it keeps a token in sessionStorage, obtained from the
// dev-only token endpoint (`POST /api/dev/token`, which answers 404 unless the Worker
// runs with ENVIRONMENT=development) or pasted (`make token USER=alice`).
//
// A deployment replaces this file and keeps its exports, e.g. with Firebase:
//
//   import { getAuth } from "https://www.gstatic.com/firebasejs/10.12.0/firebase-auth.js";
//   export const getToken = (refresh) => getAuth().currentUser?.getIdToken(refresh) ?? null;
//   export const currentUser = () => getAuth().currentUser?.email ?? null;
//   export const signOut = () => getAuth().signOut();
//   export const devSignIn = null;   // no development sign-in
//   export const useToken = null;    // no pasted tokens

const KEY = "plangate.account.token";

function storage() {
  try {
    return globalThis.sessionStorage;
  } catch {
    return null;
  }
}

export function getToken() {
  return storage()?.getItem(KEY) ?? null;
}

/** Who is signed in (the token's `sub`), or null. */
export function currentUser() {
  const token = getToken();
  if (!token) return null;
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(payload + "=".repeat((4 - (payload.length % 4)) % 4)));
    return claims.email || claims.sub || null;
  } catch {
    return null;
  }
}

export function useToken(token) {
  storage()?.setItem(KEY, String(token).trim());
}

export function signOut() {
  storage()?.removeItem(KEY);
}

/**
 * Signs in as `userId` through the dev-only endpoint. Rejects with an Error whose
 * `code` is the API's (NOT_FOUND when the Worker is not in development).
 */
export async function devSignIn(userId, baseUrl = "") {
  const response = await fetch(`${baseUrl}/api/dev/token`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ userId }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok || !body.token) {
    const error = new Error(body.message || `HTTP ${response.status}`);
    error.code = body.code || "BAD_RESPONSE";
    error.status = response.status;
    throw error;
  }
  useToken(body.token);
  return body;
}
