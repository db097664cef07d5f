// Browser uploads over the resumable upload API (/uploads), in File.slice() pieces: each PUT streams
// one Blob slice from disk, so the tab's memory stays flat whatever the file size. The upload id is
// remembered in localStorage under the file's name, size and mtime; after a network cut or a reload
// the same file resumes at the offset the server reports.
import { data, ApiError } from "./api.js";

export const PIECE_BYTES = 8 * 1024 * 1024;
const KEY = "stratus.uploads";

function fileKey(file) {
  return `${file.name}|${file.size}|${file.lastModified}`;
}

export function remembered() {
  try {
    return JSON.parse(localStorage.getItem(KEY) || "{}");
  } catch {
    return {};
  }
}

function remember(file, entry) {
  const all = remembered();
  if (entry) all[fileKey(file)] = entry;
  else delete all[fileKey(file)];
  localStorage.setItem(KEY, JSON.stringify(all));
}

export function forget(file) {
  remember(file, null);
}

export function forgetId(uploadId) {
  const all = remembered();
  for (const [k, v] of Object.entries(all)) if (v.id === uploadId) delete all[k];
  localStorage.setItem(KEY, JSON.stringify(all));
}

/**
 * Upload `file` (or resume it); resolves to the upload id. `onProgress({received, size, bytesPerSecond,
 * resumedAt})` is called after every piece. Throws ApiError("NetworkError", ...) on a cut: call again.
 */
export async function uploadFile(cred, file, { format = null, onProgress = () => {}, signal } = {}) {
  const size = file.size;
  let entry = remembered()[fileKey(file)];
  let received = 0;
  let resumedAt = null;
  if (entry) {
    try {
      const st = await data(cred, "GET", `/uploads/${entry.id}`);
      received = st.Received;
      resumedAt = received;
    } catch (e) {
      if (e.code === "NetworkError" || e.isAuth) throw e;
      entry = null; // expired or consumed: start again
    }
  }
  if (!entry) {
    const body = { Size: size, Name: file.name };
    if (format) body.Format = format;
    const st = await data(cred, "POST", "/uploads", { json: body });
    entry = { id: st.UploadId, name: file.name, size, mtime: file.lastModified };
    remember(file, entry);
  }
  const started = performance.now();
  const startBytes = received;
  onProgress({ received, size, bytesPerSecond: 0, resumedAt, uploadId: entry.id });
  while (received < size) {
    const end = Math.min(size, received + PIECE_BYTES);
    try {
      const st = await data(cred, "PUT", `/uploads/${entry.id}`, {
        query: `offset=${received}`, blob: file.slice(received, end), signal,
      });
      received = st.Received;
    } catch (e) {
      if (!(e instanceof ApiError) || e.code !== "InvalidParameterValue") throw e;
      // The server has a different offset (a piece landed but its answer was lost): ask and go on.
      received = (await data(cred, "GET", `/uploads/${entry.id}`)).Received;
    }
    remember(file, { ...entry, received });
    const secs = (performance.now() - started) / 1000;
    onProgress({ received, size, bytesPerSecond: secs > 0 ? (received - startBytes) / secs : 0, resumedAt,
      uploadId: entry.id });
  }
  return entry.id;
}
