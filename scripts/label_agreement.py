#!/usr/bin/env python3
"""Agreement between the labels of data/routing/*.jsonl and a second labeller's
(data/routing/second-labels/*.jsonl: id, tier, confidence, why), per source and overall,
with Cohen's kappa. With --loso FILE (the JSON of `triage eval --loso data/routing/ --json`)
it also splits the router's misroutes by the second labeller's confidence.

Usage: python3 scripts/label_agreement.py [--loso loso.json]
Standard library only; reads the data, writes nothing."""
import argparse
import collections
import json
import pathlib

TIERS = ("fast", "coder", "heavy")
ROOT = pathlib.Path(__file__).resolve().parent.parent / "data" / "routing"


def read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--loso", help="JSON of `triage eval --loso data/routing/ --json`")
    args = parser.parse_args()
    pairs = collections.Counter()
    second = {}
    print(f"{'source':20} {'n':>4} {'agree':>7} {'severe':>7} {'borderline':>11}")
    for path in sorted((ROOT / "second-labels").glob("*.jsonl")):
        first = {r["id"]: r["tier"] for r in read(ROOT / path.name)}
        rows = read(path)
        if sorted(r["id"] for r in rows) != sorted(first):
            raise SystemExit(f"{path}: ids differ from {ROOT / path.name}")
        agree = sum(first[r["id"]] == r["tier"] for r in rows)
        severe = sum({first[r["id"]], r["tier"]} == {"fast", "heavy"} for r in rows)
        borderline = sum(r.get("confidence") == "borderline" for r in rows)
        for r in rows:
            pairs[(first[r["id"]], r["tier"])] += 1
            second[r["id"]] = r
        print(f"{path.stem:20} {len(rows):4} {100 * agree / len(rows):6.1f}% {severe:7} {borderline:11}")
    n = sum(pairs.values())
    observed = sum(pairs[(t, t)] for t in TIERS) / n
    expected = sum(
        sum(pairs[(t, u)] for u in TIERS) / n * sum(pairs[(u, t)] for u in TIERS) / n
        for t in TIERS
    )
    kappa = (observed - expected) / (1 - expected)
    print(f"{'all':20} {n:4} {100 * observed:6.1f}%  kappa {kappa:.3f}")
    print("first label (rows) by second label (columns):", *TIERS)
    for t in TIERS:
        print(f"  {t:6}", *(pairs[(t, u)] for u in TIERS))
    if args.loso:
        with open(args.loso, encoding="utf-8") as f:
            loso = json.load(f)
        missed = [m for s in loso["sources"] for m in s["report"]["misrouted"] if m["id"] in second]
        borderline = sum(second[m["id"]].get("confidence") == "borderline" for m in missed)
        total_borderline = sum(r.get("confidence") == "borderline" for r in second.values())
        agreed_with_router = sum(second[m["id"]]["tier"] == m["got"] for m in missed)
        print(
            f"router misroutes on these sources: {len(missed)}; the second labeller called "
            f"{borderline} of them borderline ({total_borderline} of {len(second)} overall) "
            f"and agreed with the router on {agreed_with_router}"
        )


if __name__ == "__main__":
    main()
