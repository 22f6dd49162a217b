"""End-of-run report: a before / after table, the learning curve as text, and a PNG of the curves."""

from __future__ import annotations

import json
import pathlib


def read_metrics(path) -> list[dict]:
    """All rows of a `metrics.jsonl`."""
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


def plot_run(metrics_path, out_path, *, title: str | None = None) -> pathlib.Path:
    """Plots `reward/mean` and every `eval/<set>/accuracy` against the step; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")  # Headless: no display needed.
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    reward = [(r["step"], r["reward/mean"]) for r in rows if "reward/mean" in r]
    if reward:
        ax.plot(*zip(*reward), label="train reward (mean)", color="tab:blue", alpha=0.8)
    eval_keys = sorted({k for r in rows for k in r if k.startswith("eval/") and k.endswith("/accuracy")})
    for color, key in zip(("tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"), eval_keys):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*pts), marker="o", color=color, label=f"held-out {key.split('/')[1]} accuracy")
    ax.set_xlabel("RL step")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(title or pathlib.Path(metrics_path).parent.name)
    fig.tight_layout()
    out_path = pathlib.Path(out_path)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


def summary_text(rows: list[dict]) -> str:
    """Markdown: held-out accuracy before vs after training, then reward / accuracy per step."""
    eval_keys = sorted({k for r in rows for k in r if k.startswith("eval/") and k.endswith("/accuracy")})
    lines = []
    if eval_keys:
        lines += ["| held-out set | step | accuracy | step | accuracy | change |", "|---|---:|---:|---:|---:|---:|"]
        for key in eval_keys:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            (s0, a0), (s1, a1) = pts[0], pts[-1]
            lines.append(f"| {key.split('/')[1]} | {s0} | {100 * a0:.1f}% | {s1} | {100 * a1:.1f}% | "
                         f"{100 * (a1 - a0):+.1f} pts |")
        lines.append("")
    lines += ["| " + " | ".join(["step", "train reward", "response length"] + [k.split("/")[1] for k in eval_keys]) + " |",
              "|---:|---:|---:|" + "---:|" * len(eval_keys)]
    by_step: dict[int, dict] = {}
    for r in rows:
        by_step.setdefault(r["step"], {}).update(r)
    for step in sorted(by_step):
        r = by_step[step]
        reward = f"{r['reward/mean']:.3f}" if "reward/mean" in r else ""
        length = f"{r['response/length_mean']:.0f}" if "response/length_mean" in r else ""
        accs = [f"{100 * r[k]:.1f}%" if k in r else "" for k in eval_keys]
        lines.append("| " + " | ".join([str(step), reward, length] + accs) + " |")
    return "\n".join(lines)
