// The console is a client of the same CVM API as the SDK (POST / with X-TC-Action) and of the data
// API (/uploads, /buckets) the CLI uses; every request is signed with TC3 in the page.
import { sign } from "./tc3.js";

export class ApiError extends Error {
  constructor(code, message, requestId) {
    super(message);
    this.code = code;
    this.requestId = requestId;
  }
  get isAuth() {
    return this.code.startsWith("AuthFailure");
  }
}

let onAuthFailure = () => {};
export function setAuthFailureHandler(fn) {
  onAuthFailure = fn;
}

function unwrap(json) {
  const r = json && json.Response;
  if (!r) throw new ApiError("InternalError", "The server sent an answer the console doesn't understand.");
  if (r.Error) {
    const err = new ApiError(r.Error.Code, r.Error.Message, r.RequestId);
    if (err.isAuth) onAuthFailure(err);
    throw err;
  }
  return r;
}

async function send(url, init) {
  let resp;
  try {
    resp = await fetch(url, { ...init, credentials: "omit", cache: "no-store" });
  } catch (e) {
    throw new ApiError("NetworkError", `The server could not be reached (${e.message}).`);
  }
  return resp;
}

/** Call a CVM action; returns the Response object or throws ApiError(code, message). */
export async function call(cred, action, params = {}, region = null) {
  const body = JSON.stringify(params);
  const headers = await sign(cred, { method: "POST", body });
  headers["X-TC-Action"] = action;
  headers["X-TC-Version"] = "2017-03-12";
  if (region) headers["X-TC-Region"] = region;
  const resp = await send("/", { method: "POST", headers, body });
  return unwrap(await resp.json());
}

/** A signed request to the data API. `body` null + `stream` sends a Blob as UNSIGNED-PAYLOAD. */
export async function data(cred, method, path, { query = "", json = undefined, blob = undefined, region = null,
  signal = undefined, raw = false } = {}) {
  let body = "";
  let contentType = "application/json";
  if (json !== undefined) body = JSON.stringify(json);
  if (blob !== undefined) contentType = "application/octet-stream";
  const headers = await sign(cred, { method, path, query, contentType, body: blob !== undefined ? null : body });
  if (region) headers["X-TC-Region"] = region;
  const url = path + (query ? `?${query}` : "");
  const init = { method, headers, signal };
  if (blob !== undefined) init.body = blob;
  else if (method === "POST") init.body = body;
  const resp = await send(url, init);
  if (raw && resp.ok) return resp;
  return unwrap(await resp.json());
}
