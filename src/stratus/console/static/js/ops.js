// The operations panel: long work the console started (uploads, imports, exports, copies, captures,
// launches), kept in localStorage per SecretId so it survives a reload, and polled from the API
// (DescribeImages, DescribeTasks, DescribeInstances) until it ends.
import { call } from "./api.js";

const FINAL = new Set(["NORMAL", "IMPORTFAILED", "CREATEFAILED", "SUCCESS", "FAILED", "DONE", "RUNNING_ALL",
  "LAUNCH_FAILED", "CANCELLED"]);

export class Operations {
  constructor(secretId, onChange) {
    this.key = `stratus.ops.${secretId}`;
    this.onChange = onChange;
    this.list = this.load();
  }

  load() {
    try {
      return JSON.parse(localStorage.getItem(this.key) || "[]");
    } catch {
      return [];
    }
  }

  save() {
    const text = JSON.stringify(this.list.slice(0, 50));
    if (text === this.saved) return; // unchanged: don't redraw (a file chooser in the panel would be lost)
    this.saved = text;
    localStorage.setItem(this.key, text);
    this.onChange(this.list);
  }

  add(op) {
    op.id = op.id || `op-${Date.now()}-${Math.random().toString(36).slice(2, 7)}`;
    op.started = op.started || new Date().toISOString();
    op.state = op.state || "PENDING";
    op.progress = op.progress || 0;
    this.list.unshift(op);
    this.save();
    return op;
  }

  update(id, fields) {
    const op = this.list.find((o) => o.id === id);
    if (op) Object.assign(op, fields);
    this.save();
    return op;
  }

  remove(id) {
    this.list = this.list.filter((o) => o.id !== id);
    this.save();
  }

  active() {
    return this.list.filter((o) => !o.final && o.kind !== "upload");
  }

  /** Refresh every unfinished operation from the API, one call per region and kind. */
  async poll(cred) {
    const todo = this.active();
    if (!todo.length) return;
    const byRegion = (kind) => {
      const m = new Map();
      for (const o of todo.filter((x) => kind.includes(x.kind))) {
        if (!m.has(o.region)) m.set(o.region, []);
        m.get(o.region).push(o);
      }
      return m;
    };
    for (const [region, ops] of byRegion(["import", "copy", "capture"])) {
      const ids = [...new Set(ops.map((o) => o.imageId))];
      const r = await call(cred, "DescribeImages", { ImageIds: ids }, region);
      const images = new Map(r.ImageSet.map((i) => [i.ImageId, i]));
      for (const o of ops) {
        const img = images.get(o.imageId);
        if (!img) { Object.assign(o, { state: "GONE", final: true }); continue; }
        const pct = img.ImageState === "SYNCING" ? img.SyncPercent : img.ImageProgress;
        Object.assign(o, {
          state: img.ImageState, progress: img.ImageState === "NORMAL" ? 100 : pct || 0,
          error: img.ImageStateReason || "", final: FINAL.has(img.ImageState),
        });
      }
    }
    for (const [, ops] of byRegion(["export"])) {
      const r = await call(cred, "DescribeTasks", { TaskIds: ops.map((o) => o.taskId) });
      const tasks = new Map(r.TaskSet.map((t) => [t.TaskId, t]));
      for (const o of ops) {
        const t = tasks.get(o.taskId);
        if (!t) continue;
        Object.assign(o, { state: t.TaskState, progress: t.TaskState === "SUCCESS" ? 100 : t.Progress,
          error: t.ErrorMessage || "", final: FINAL.has(t.TaskState), stage: t.Stage || "" });
      }
    }
    for (const [region, ops] of byRegion(["launch"])) {
      const ids = ops.flatMap((o) => o.instanceIds);
      const r = await call(cred, "DescribeInstances", { InstanceIds: ids.slice(0, 100) }, region);
      const inst = new Map(r.InstanceSet.map((i) => [i.InstanceId, i]));
      for (const o of ops) {
        const states = o.instanceIds.map((id) => inst.get(id)?.InstanceState || "TERMINATED");
        const pending = states.filter((s) => s === "PENDING").length;
        const failed = states.find((s) => s === "LAUNCH_FAILED");
        const reason = o.instanceIds.map((id) => inst.get(id)?.InstanceStateReason).find(Boolean);
        Object.assign(o, {
          state: failed ? "LAUNCH_FAILED" : pending ? "PENDING" : "SUCCESS",
          progress: Math.round(100 * (states.length - pending) / states.length),
          error: failed ? reason || "" : "", final: !pending,
        });
      }
    }
    this.save();
  }
}
