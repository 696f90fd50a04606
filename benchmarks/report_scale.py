"""The ``scale`` section of docs/RESULTS.md: the Taobao-scale run of ``benchmarks/scale.py`` (issue 12, part 5).

Every figure comes from ``benchmarks/results/scale.json``: a table of time and peak memory per step and size,
a plot of how they grow with the number of interactions, and the cost of the same run at 1B interactions /
20M items on a cluster, *computed here* from the measured per-interaction, per-sample and per-item figures of
the largest size (nothing in that paragraph is typed in except the scale factors and stated assumptions).
"""
from __future__ import annotations

import math
from typing import Any

CLUSTER_INTERACTIONS = 1_000_000_000
CLUSTER_ITEMS = 20_000_000
PQ_BYTES_PER_ITEM = 32 + 8  # IVF-PQ with 32 one-byte sub-quantisers + the 8-byte id of each item
DATA_STEPS = ("ingest", "validate", "split")


def _cell(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 1000 else (f"{x:,.1f}" if abs(x) >= 100 else f"{x:.{digits}f}")
    if isinstance(x, int):
        return f"{x:,}"
    return str(x).replace("|", "\\|")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)]


def _ordered(data: dict) -> list[tuple[str, dict]]:
    sizes = [(k, v) for k, v in data.get("sizes", {}).items() if v.get("interactions")]
    return sorted(sizes, key=lambda kv: kv[1]["interactions"])


def _step(block: dict, name: str) -> dict:
    return next((s for s in block.get("steps", []) if s["step"] == name), {})


def step_rows(data: dict) -> list[list[Any]]:
    """One row per (size, step): wall, CPU, peak RSS."""
    rows = []
    for name, b in _ordered(data):
        for s in b.get("steps", []):
            rows.append([name, b["interactions"], s["step"], s["wall_s"], s["cpu_s"], s["peak_rss_mb"],
                         s.get("load_avg_1m", [None])[0]])
    return rows


def summary_rows(data: dict) -> list[list[Any]]:
    targets = data.get("targets", {})
    rows = []
    for name, b in _ordered(data):
        dp = b.get("data_path", {})
        tr, ix, ev = b.get("train", {}), b.get("index", {}), b.get("evaluate", {})
        ok = (dp.get("wall_s") is not None and dp["wall_s"] <= targets.get("data_path_wall_s", math.inf)
              and dp["peak_rss_mb"] <= targets.get("data_path_peak_rss_mb", math.inf))
        rows.append([name, b["interactions"], b.get("split_stats", {}).get("items"), dp.get("wall_s"),
                     dp.get("cpu_s"), dp.get("peak_rss_mb"), ok if dp else None,
                     None if tr.get("skipped") else tr.get("samples_per_s"), tr.get("embedding_optimizer"),
                     tr.get("peak_rss_mb"), _index_label(ix), ix.get("build_s"), ix.get("queries_per_s"),
                     ix.get("interest_recall@50"), ev.get("test.num_users"), ev.get("test.recall@50"),
                     ev.get("faiss_check.list_agreement")])
    return rows


def _index_label(ix: dict) -> str | None:
    """Factory and the nprobe it is searched with (build_index's tuned one, for IVF)."""
    if not ix.get("factory"):
        return None
    return f"{ix['factory']} (nprobe {ix['nprobe']})" if ix["factory"].startswith("IVF") else ix["factory"]


def cluster_estimate(data: dict) -> list[str]:
    """Text: the same run at 1B interactions / 20M items, from the largest size's measured figures."""
    sizes = _ordered(data)
    if not sizes:
        return []
    name, b = sizes[-1]
    n = b["interactions"]
    items = b.get("split_stats", {}).get("items") or b.get("config", {}).get("items")
    f_int = CLUSTER_INTERACTIONS / n
    f_items = CLUSTER_ITEMS / items if items else None
    out = [f"**At 1B interactions / 20M items on a cluster** (extrapolated from the {name} run: "
           f"{n:,} interactions, {items:,} items; linear where the cost is per row, stated otherwise):", ""]
    dp = b.get("data_path")
    if dp:
        cpu_per_m = dp["cpu_s"] / (n / 1e6)
        split_peak = _step(b, "split").get("peak_rss_mb")
        val_peak = _step(b, "validate").get("peak_rss_mb")
        out.append(f"- *Data path*: {cpu_per_m:.2f} CPU-s per million interactions (ingest + validate + split) "
                   f"→ {cpu_per_m * 1e3 / 3600:.1f} CPU-hours at 1B: about {cpu_per_m * 1e3 / 60 / 32:.0f} "
                   f"min on 32 cores if the steps are sharded by user (every check and the split are per user "
                   f"or per row, and the foreign-key sets are per distinct id). On one box: validate streams "
                   f"(peak {val_peak:,.0f} MB here, bounded by its chunk, the row hashes and the distinct-id "
                   f"sets), split reads in chunks but holds the encoded rows for the k-core and the time order "
                   f"(peak {split_peak:,.0f} MB at {n / 1e6:,.0f}M rows → ~{split_peak * f_int / 1024:,.0f} GB "
                   f"at 1B): at that size it must be sharded by user hash first (the k-core's item counts are "
                   f"then summed across shards).")
    tr = b.get("train")
    if tr and not tr.get("skipped"):
        per_sample_ms = tr["cpu_ms_per_step"] / tr["batch_size"]
        samples = tr["train_samples"] * f_int
        cpu_h = samples * per_sample_ms / 1e3 / 3600
        table_gb = CLUSTER_ITEMS * 64 * 4 / 2**30
        need = samples / 3600
        out.append(f"- *Training* ({tr['variant']}, {tr['embedding_optimizer']}, batch {tr['batch_size']}, "
                   f"{tr['num_negatives']} negatives): {per_sample_ms:.3f} CPU-ms per sample measured at "
                   f"{tr['num_items']:,} items ({tr['samples_per_s']:,.0f} samples/s on {tr['torch_threads']} "
                   f"thread(s)). One epoch at 1B interactions is ~{samples / 1e6:,.0f}M samples: "
                   f"{cpu_h:,.0f} CPU-core-hours at that rate. With a per-step cost independent of the "
                   f"catalogue (sparse rows), a PyTorchJob DDP run on N GPUs needs N × per-GPU samples/s ≥ "
                   f"{need:,.0f} samples/s for one epoch per hour (e.g. N = 8 at {need / 8:,.0f} samples/s "
                   f"each). Memory per rank: the 20M × 64 fp32 item table is {table_gb:.1f} GB, with Adam's two "
                   f"moments {3 * table_gb:.1f} GB (every DDP rank holds a replica; beyond one GPU's memory the "
                   f"table would be row-sharded, TorchRec-style); measured here: peak "
                   f"{tr['peak_rss_mb']:,.0f} MB for a {tr['item_table_mb']:,.0f} MB table.")
    ix = b.get("index")
    if ix and ix.get("build_s") is not None and f_items:
        per_item_us = 1e6 * ix["build_s"] / ix["num_items"]
        bytes_item = ix["index_bytes"] / ix["num_items"]
        tuned = ""
        if ix.get("nprobe_tuning"):
            tuned = (" (auto raised nprobe from " + str(ix.get("nprobe_requested")) + ": "
                     + ", ".join(f"{p} → {r:.3f}" for p, r in sorted(ix["nprobe_tuning"].items(),
                                                                     key=lambda kv: int(kv[0]))) + ")")
        out.append(f"- *Index*: {_index_label(ix)}{tuned} over {ix['num_items']:,} items built in "
                   f"{ix['build_s']:.0f} s "
                   f"({per_item_us:.1f} µs per item, k-means included), {bytes_item:.0f} bytes per item, "
                   f"{ix['queries_per_s']:,.0f} interest-queries/s at recall@50 {ix['interest_recall@50']:.3f}. "
                   f"At 20M items: ~{per_item_us * CLUSTER_ITEMS / 1e6 / 60:.0f} min to build at that per-item "
                   f"rate on this box; {bytes_item * CLUSTER_ITEMS / 2**30:.1f} GB in this format vs "
                   f"{PQ_BYTES_PER_ITEM * CLUSTER_ITEMS / 2**30:.2f} GB as faiss IVF-PQ (32-byte codes + ids), "
                   f"which is what a 20M catalogue would be served from (recall to be re-measured: PQ loses "
                   f"some, usually recovered by re-ranking the top few hundred exactly). With nlist ∝ √N "
                   f"a query scans ∝ √N codes: ~{math.sqrt(f_items):.1f}× the work per query.")
    ev = _step(b, "evaluate")
    users = b.get("evaluate", {}).get("test.num_users")
    if ev and users and items:
        valid_users = b.get("sample", {}).get("valid", {}).get("users", 0)
        per = ev["cpu_s"] / ((users + valid_users) * items)
        out.append(f"- *Evaluation*: {ev['cpu_s']:.0f} CPU-s for {users:,} test + {valid_users:,} valid users "
                   f"exact over {items:,} items and through the index ({per * 1e9:.2f} CPU-ns per user×item): "
                   f"the same 10,000 test users over 20M items ≈ {per * 10_000 * CLUSTER_ITEMS / 60:.0f} "
                   f"CPU-minutes exact; through the IVF-PQ index alone it is the index's queries/s that counts.")
    return out


def _plot(data: dict, img_dir, rel: str, save, plt_fn) -> str | None:
    sizes = _ordered(data)
    if len(sizes) < 2:
        return None
    plt = plt_fn()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    xs = [b["interactions"] / 1e6 for _, b in sizes]
    names = sorted({s["step"] for _, b in sizes for s in b.get("steps", [])},
                   key=lambda s: (s not in DATA_STEPS, s))
    for step in names:
        pts = [(x, _step(b, step)) for x, (_, b) in zip(xs, sizes)]
        pts = [(x, s) for x, s in pts if s]
        if not pts:
            continue
        a1.plot([x for x, _ in pts], [s["wall_s"] for _, s in pts], marker="o", label=step)
        a2.plot([x for x, _ in pts], [s["peak_rss_mb"] / 1024 for _, s in pts], marker="o", label=step)
    dp = [(x, b["data_path"]) for x, (_, b) in zip(xs, sizes) if b.get("data_path")]
    a1.plot([x for x, _ in dp], [d["wall_s"] for _, d in dp], "k--", marker="s", label="data path total")
    t = data.get("targets", {})
    if t.get("data_path_wall_s"):
        a1.axhline(t["data_path_wall_s"], color="grey", lw=0.8, ls=":")
    if t.get("data_path_peak_rss_mb"):
        a2.axhline(t["data_path_peak_rss_mb"] / 1024, color="grey", lw=0.8, ls=":")
    a1.set_xlabel("interactions (M)")
    a1.set_ylabel("wall s")
    a1.set_title("time per step (dotted: data path target)", fontsize=9)
    a2.set_xlabel("interactions (M)")
    a2.set_ylabel("peak RSS (GB)")
    a2.set_title("peak memory per step (dotted: target)", fontsize=9)
    a1.legend(fontsize=7)
    return save(fig, img_dir, "scale_growth.png", rel)


def _load_lines(sizes: list[tuple[str, dict]], t: dict) -> list[str]:
    """How busy the box was while the data path and while the other steps ran, and the data path's verdict
    by CPU time (a step's own cost, what its wall time is on a quiet box)."""
    def loads(data: bool) -> list[float]:
        return [x for _, b in sizes for st in b.get("steps", []) if (st["step"] in DATA_STEPS) == data
                for x in st.get("load_avg_1m", []) if x is not None]

    cpus = sizes[-1][1].get("machine", {}).get("cpus") if sizes else None
    parts = [f"{label} {min(ls):.1f} to {max(ls):.1f}" for label, ls in
             (("while the data path ran", loads(True)), ("while train / build_index / evaluate ran", loads(False)))
             if ls]
    if not parts:
        return []
    verdicts = ", ".join(
        f"{name} {'yes' if b['data_path']['cpu_s'] <= t.get('data_path_wall_s', 300) and b['data_path']['peak_rss_mb'] <= t.get('data_path_peak_rss_mb', 8192) else 'no'}"
        f" ({b['data_path']['cpu_s']:.0f} CPU-s, {b['data_path']['peak_rss_mb'] / 1024:.1f} GB)"
        for name, b in sizes if b.get("data_path"))
    return ["", f"1-minute load average on the {cpus}-core box {'; '.join(parts)}. A load above the core count means "
                f"other work shared the box: it inflates wall time, not CPU time (each step is essentially "
                f"single-threaded), so CPU time is the better measure of a step's own cost. Data path within "
                f"target by CPU time: {verdicts}."]


def _model_line(sizes: list[tuple[str, dict]]) -> list[str]:
    """What the index and the evaluation were built from: the train step's briefly trained model."""
    for name, b in reversed(sizes):
        tr = b.get("train")
        if tr and tr.get("train_samples"):
            seen = (tr["steps"] + tr["warmup_steps"]) * tr["batch_size"]
            return ["", f"The {name} index and evaluation use the train step's model: {tr['steps'] + tr['warmup_steps']}"
                        f" steps of {tr['batch_size']} = {seen:,} samples, {100 * seen / tr['train_samples']:.2f} % of "
                        f"one epoch over {tr['train_samples']:,} training samples. Its Recall@50 shows the pipeline "
                        f"working at this size, not the model's quality; the recall of the index against exact "
                        f"search is measured on its real user interests."]
    return []


def section(data: dict[str, Any], img_dir, rel: str, save, plt_fn) -> list[str]:
    """Markdown lines for ``scale.json``."""
    t = data.get("targets", {})
    sizes = _ordered(data)
    cfg = sizes[-1][1].get("config", {}) if sizes else {}
    out = [f"Taobao-scale run on one box (`{data.get('command', 'benchmarks/scale.py')}`): "
           f"{cfg.get('users', 0):,} users, {cfg.get('items', 0):,} items generated (the k-core filter of split "
           f"keeps the items with ≥ 5 interactions), synthetic planted interests; every step through its own CLI in a fresh subprocess "
           f"(wall time around it, peak RSS from `wait4`). Targets: data path (ingest → validate → split) ≤ "
           f"{t.get('data_path_wall_s', 300) / 60:.0f} min and ≤ {t.get('data_path_peak_rss_mb', 8192) / 1024:.0f}"
           f" GB peak at 100M interactions on 2 cores; IVF recall@50 ≥ {t.get('index_recall_at_50', 0.95)}. "
           f"Training is a fixed number of steps after a warm-up (the train worker of benchmarks/scale.py drives "
           f"RetrievalTask with a Lightning `Trainer(max_steps=...)`: components.train has no step bound); "
           f"evaluation on sampled test users, exact and through the IVF index.", ""]
    out += _table(["size", "interactions", "items kept", "data path wall s", "data CPU s", "data peak MB",
                   "data within target (wall)", "train samples/s", "embedding optimizer", "train peak MB",
                   "index", "index build s", "queries/s", "recall@50 vs exact", "test users",
                   "test Recall@50", "IVF list agreement"], summary_rows(data))
    commands = [(name, b["command"]) for name, b in sizes if b.get("command")]
    if commands:
        out += ["", "Commands: " + "; ".join(f"{name}: `{cmd}`" for name, cmd in commands) + "."]
    out += _load_lines(sizes, t)
    out += _model_line(sizes)
    out += ["", "Per step (load = 1-minute load average when the step started; other work on the shared box "
                "inflates wall time, not CPU time):", ""]
    out += _table(["size", "interactions", "step", "wall s", "CPU s", "peak RSS MB", "load"], step_rows(data))
    img = _plot(data, img_dir, rel, save, plt_fn)
    if img:
        out += ["", img]
    est = cluster_estimate(data)
    if est:
        out += ["", *est]
    return out
