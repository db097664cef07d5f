// Where the credential lives: IndexedDB of this origin, as {secretId, key: non-extractable CryptoKey,
// expiresAt}. It survives a reload (so work in progress stays visible) and is deleted on sign-out, on
// expiry, and when the server refuses the key. See docs/console.md (threat model).

const DB = "stratus-console";
const STORE = "session";
export const SESSION_HOURS = 8;

function open() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function tx(mode, fn) {
  const db = await open();
  try {
    return await new Promise((resolve, reject) => {
      const t = db.transaction(STORE, mode);
      const req = fn(t.objectStore(STORE));
      t.oncomplete = () => resolve(req.result);
      t.onerror = () => reject(t.error);
    });
  } finally {
    db.close();
  }
}

export async function load() {
  const s = await tx("readonly", (st) => st.get("current"));
  if (!s) return null;
  if (s.expiresAt <= Date.now()) {
    await clear();
    return { expired: true };
  }
  return s;
}

export function save(session) {
  return tx("readwrite", (st) => st.put(session, "current"));
}

export function clear() {
  return tx("readwrite", (st) => st.delete("current"));
}
