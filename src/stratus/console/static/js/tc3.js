// TC3-HMAC-SHA256 in the browser with WebCrypto: the same signature the SDK sends (contract §2.5,
// src/stratus/api/cvm/signing.py). The SecretKey itself is imported once as a non-extractable HMAC
// key ("TC3" + SecretKey); only that CryptoKey is kept, so script in the page can sign but can't read it.

const enc = new TextEncoder();
const SERVICE = "cvm";
export const UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD";

function hex(buf) {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
}

export async function sha256hex(data) {
  const bytes = typeof data === "string" ? enc.encode(data) : data;
  return hex(await crypto.subtle.digest("SHA-256", bytes));
}

async function hmacKey(raw, extractable = false) {
  return crypto.subtle.importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, extractable, ["sign"]);
}

async function hmac(key, msg) {
  return crypto.subtle.sign("HMAC", key, enc.encode(msg));
}

/** The root key: a non-extractable CryptoKey made from the SecretKey, which is then dropped. */
export async function rootKey(secretKey) {
  return hmacKey(enc.encode("TC3" + secretKey));
}

function utcDate(ts) {
  return new Date(ts * 1000).toISOString().slice(0, 10);
}

/**
 * Headers that sign one request. `body` is the exact string sent (POST), or null for a streamed
 * body (signed as UNSIGNED-PAYLOAD); GET bodies are empty. `query` is the raw query string, no "?".
 */
export async function sign(cred, { method, path = "/", query = "", contentType = "application/json", body = "" }) {
  const ts = Math.floor(Date.now() / 1000);
  const date = utcDate(ts);
  const host = location.host; // what the browser sends as Host, which can't be set by script
  const extra = {};
  let payloadHash;
  if (body === null) {
    payloadHash = await sha256hex(UNSIGNED_PAYLOAD);
    extra["X-TC-Content-SHA256"] = UNSIGNED_PAYLOAD;
  } else {
    payloadHash = await sha256hex(method === "POST" ? body : "");
  }
  const canonical = [
    method, path, method === "POST" ? "" : query,
    `content-type:${contentType}\nhost:${host}\n`, "content-type;host", payloadHash,
  ].join("\n");
  const scope = `${date}/${SERVICE}/tc3_request`;
  const toSign = ["TC3-HMAC-SHA256", String(ts), scope, await sha256hex(canonical)].join("\n");
  let k = await hmacKey(await hmac(cred.key, date));
  k = await hmacKey(await hmac(k, SERVICE));
  k = await hmacKey(await hmac(k, "tc3_request"));
  const signature = hex(await hmac(k, toSign));
  return {
    Authorization: `TC3-HMAC-SHA256 Credential=${cred.secretId}/${scope}, SignedHeaders=content-type;host, ` +
      `Signature=${signature}`,
    "Content-Type": contentType,
    "X-TC-Timestamp": String(ts),
    ...extra,
  };
}
