#!/usr/bin/env python3
"""Promotes the winning kernel build of an A/B run of hack/gpu/run.sh: picks
it, then makes its flags the kernel source's defaults, so that the module
built next (and committed) is that build.

  python3 hack/gpu/promote.py pick AB_MD BASE_LABEL [--margin 0.02] [--floor 0.95]
  python3 hack/gpu/promote.py apply -f FILE [-f FILE ...] -- FLAG...
  python3 hack/gpu/promote.py self-test

pick: AB_MD is the ab stage's table (r/ab.md): rows "| LABEL-KERNEL | b |
h_q | s_q | s_k | us | ..." from every round. For each build and shape the
time is the median over rounds of each kernel, then the fastest of the
kernels the Go engine runs (ENGINE_KERNELS; the benchmark also times
experiments it does not, such as "pair"): the engine's kernel choice
(worker/engine/cuda/kernelchoice.go) is Go and can follow a table without
a module rebuild, so a build is worth what its best such kernel reaches on
each shape. A build's score is the geometric mean over
the shapes the base build ran of base time / build time. The winner is the
best-scoring build with score >= 1 + margin and no shape below floor (a
build that wins on average but loses one anchor shape would trade a met bar
for a missed one). It is printed alone on the last line of stdout, after
the per-shape table. No winner: the last line is "none" and the exit
status 3.

apply: each FLAG is -DNAME=VALUE, and NAME must have exactly one default in
the FILEs, written as "#ifndef NAME" followed by "#define NAME OLD"; OLD
becomes VALUE in place, so the source's lines keep their numbers. Any other
flag, or a name without exactly one default, fails before a file changes.

Malformed input exits 2. Written here rather than taken from a library: a
median, a geometric mean and a table over a few dozen rows of this
project's own format, and a two-line pattern in its own sources.
"""
import argparse
import contextlib
import io
import math
import os
import re
import tempfile
import statistics
import sys


def parse(lines):
    """Returns {(label, kernel, b, h_q, s_q, s_k): [us, ...]}."""
    times = {}
    for n, line in enumerate(lines, 1):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) < 6 or cells[0] == "kernel" or cells[0].startswith("---"):
            continue
        name = cells[0]
        if " " in name:  # "LABEL-KERNEL varlen": not an anchor shape
            continue
        if "-" not in name:
            raise ValueError(f"line {n}: {name!r} is not LABEL-KERNEL")
        label, kernel = name.rsplit("-", 1)
        try:
            b, h, s_q, s_k = (int(c) for c in cells[1:5])
            us = float(cells[5])
        except ValueError as e:
            raise ValueError(f"line {n}: {line.strip()!r}: {e}") from None
        if not math.isfinite(us) or us <= 0:
            raise ValueError(f"line {n}: time {us} is not a positive number")
        times.setdefault((label, kernel, b, h, s_q, s_k), []).append(us)
    return times


# The decode kernels the Go engine can choose (kernelchoice.go's
# decodeFunction names, without the mla_decode_ prefix).
ENGINE_KERNELS = ("seesaw", "wgmma", "mma")


def best_times(times):
    """Returns {label: {shape: (us, kernel)}}: per shape the engine's kernel
    whose median over rounds is lowest."""
    best = {}
    for (label, kernel, *shape), samples in times.items():
        if kernel not in ENGINE_KERNELS:
            continue
        us = statistics.median(samples)
        shapes = best.setdefault(label, {})
        shape = tuple(shape)
        if shape not in shapes or us < shapes[shape][0]:
            shapes[shape] = (us, kernel)
    return best


def pick(times, base, margin=0.02, floor=0.95):
    """Returns (winner or None, report lines)."""
    best = best_times(times)
    if base not in best:
        raise ValueError(f"base build {base!r} has no timings (builds: {', '.join(sorted(best)) or 'none'})")
    shapes = sorted(best[base])
    report = ["| build | score | lowest | " + " | ".join(f"b={b} h_q={h} s_q={q} s_k={k}" for b, h, q, k in shapes) + " |",
              "|---|---|---|" + "---|" * len(shapes)]
    report.append(f"| {base} (base) | 1.000 | | " + " | ".join(f"{best[base][s][0]:.1f} us {best[base][s][1]}" for s in shapes) + " |")
    winner, winner_score = None, 1 + margin
    for label in sorted(best):
        if label == base:
            continue
        ratios = {s: best[base][s][0] / best[label][s][0] for s in shapes if s in best[label]}
        if len(ratios) < len(shapes):  # a build that skipped a shape cannot be judged on it
            report.append(f"| {label} | incomplete ({len(ratios)} of {len(shapes)} shapes) | | |")
            continue
        score = math.exp(sum(math.log(r) for r in ratios.values()) / len(ratios))
        lowest = min(ratios.values())
        cells = " | ".join(f"{ratios[s]:.3f}x {best[label][s][1]}" for s in shapes)
        report.append(f"| {label} | {score:.3f} | {lowest:.3f} | {cells} |")
        if score >= winner_score and lowest >= floor:
            winner, winner_score = label, score
    return winner, report


# The value is one token, then at most a comment: a default written as an
# expression ("(64 * 2)") is not one this can rewrite, and fails as absent.
DEFAULT = re.compile(r"^#ifndef (\w+)\b[^\n]*\n#define (\w+) (\S+)(?=[ \t]*(?:/[/*][^\n]*)?$)", re.M)


def apply(paths, flags):
    """Rewrites the defaults FLAGS name in the files PATHS; returns what changed."""
    wanted = {}
    for flag in flags:
        m = re.fullmatch(r"-D(\w+)=(\S+)", flag)
        if not m:
            raise ValueError(f"{flag!r} is not -DNAME=VALUE: only a source default can be promoted")
        wanted[m.group(1)] = m.group(2)
    texts = {}
    for path in paths:
        with open(path) as f:
            texts[path] = f.read()
    found = {name: [] for name in wanted}
    for path, text in texts.items():
        for m in DEFAULT.finditer(text):
            if m.group(1) == m.group(2) and m.group(1) in wanted:
                found[m.group(1)].append((path, m))
    for name, sites in found.items():
        if len(sites) != 1:
            raise ValueError(f"{name} has {len(sites)} defaults (#ifndef {name} / #define {name} ...) in {', '.join(paths)}, not one")
    changes = []
    for name, [(path, m)] in sorted(found.items()):
        if m.group(3) != wanted[name]:
            changes.append((path, m.start(3), m.end(3), wanted[name]))
            print(f"{name}: {m.group(3)} -> {wanted[name]} ({path})")
        else:
            print(f"{name}: {m.group(3)} already ({path})")
    # From the end of each file backwards, so earlier offsets hold.
    for path, start, end, value in sorted(changes, key=lambda c: (c[0], -c[1])):
        texts[path] = texts[path][:start] + value + texts[path][end:]
    for path in {c[0] for c in changes}:
        with open(path, "w") as f:
            f.write(texts[path])
    return changes


def self_test():
    def rows(label, kernel, times_by_shape):
        return [f"| {label}-{kernel} | {b} | {h} | 1 | {k} | {us} | 1 | 1 | 0.5 | 1 | 1 | 1 |"
                for (b, h, k), us in times_by_shape.items()]
    shapes = [(128, 128, 1024), (128, 128, 4096), (64, 16, 1024)]
    base = dict(zip(shapes, (120.0, 330.0, 48.0)))
    header = ["| kernel | b | h_q | s_q | s_k | us | GB/s | TFLOP/s | of copy BW | FlashMLA us | of FlashMLA GB/s | us with schedule |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|", "pair kernel: 66 clusters of 2 at once (132 SMs)", "(round 1 done)"]
    # Two rounds; "fast" is 10% faster everywhere through its wgmma kernel
    # (its seesaw is slower), "pairy" 30% faster only through its pair
    # kernel, which the engine does not run, "mixed" 20% faster on two
    # shapes and 8% slower on the third, "flat" within the margin.
    table = header[:]
    for r in (0, 1):
        jitter = 1 + 0.004 * r
        table += rows("head", "seesaw", {s: t * jitter for s, t in base.items()})
        table += rows("fast", "seesaw", {s: t * 1.1 for s, t in base.items()})
        table += rows("fast", "wgmma", {s: t / 1.1 * jitter for s, t in base.items()})
        table += rows("pairy", "seesaw", {s: t * jitter for s, t in base.items()})
        table += rows("pairy", "pair", {s: t / 1.3 for s, t in base.items()})
        table += rows("mixed", "seesaw", {s: t / (1.2 if s[2] == 1024 and s[1] == 128 or s[2] == 4096 else 0.92) for s, t in base.items()})
        table += rows("flat", "seesaw", {s: t / 1.01 for s, t in base.items()})
        table += ["| fast-pair varlen | 128 | 64 | 1 | mean 4096 | 1.0 | 1 | 1 | 1 | | | 1 |"]
    times = parse(table)
    winner, report = pick(times, "head")
    assert winner == "fast", (winner, report)
    lowest = {line.split("|")[1].strip(): float(line.split("|")[3]) for line in report[3:]}
    assert abs(lowest["fast"] - 1.1) < 0.003 and abs(lowest["mixed"] - 0.92) < 0.003, report
    assert abs(lowest["pairy"] - 1.0) < 0.003 and not any("pair " in line for line in report), report
    # Without "fast": "mixed" scores 1.12 but loses a shape, "flat" is
    # within the margin: nothing is promoted.
    winner, _ = pick({k: v for k, v in times.items() if k[0] != "fast"}, "head")
    assert winner is None, winner
    # With a lower floor "mixed" wins.
    winner, _ = pick({k: v for k, v in times.items() if k[0] != "fast"}, "head", floor=0.9)
    assert winner == "mixed", winner
    # A build missing a shape is not judged.
    partial = {k: v for k, v in times.items() if not (k[0] == "fast" and k[5] == 4096)}
    winner, report = pick(partial, "head", floor=0.9)
    assert winner == "mixed" and any("| fast | incomplete" in line for line in report), (winner, report)
    # The median, not the mean, of the rounds: one slow round does not sink a build.
    spiky = parse(header + rows("head", "seesaw", base) * 3 + rows("b", "seesaw", {s: t / 1.05 for s, t in base.items()}) * 2
                  + rows("b", "seesaw", {s: t * 3 for s, t in base.items()}))
    assert pick(spiky, "head")[0] == "b"
    for bad in (["| nolabel | 1 | 1 | 1 | 1 | 2.0 |"], ["| a-seesaw | 1 | x | 1 | 1 | 2.0 |"], ["| a-seesaw | 1 | 1 | 1 | 1 | nan |"]):
        try:
            parse(bad)
        except ValueError:
            continue
        raise AssertionError(f"parsed {bad}")
    try:
        pick(times, "nobody")
    except ValueError:
        pass
    else:
        raise AssertionError("a missing base build was accepted")

    with tempfile.TemporaryDirectory() as d:
        h = os.path.join(d, "params.h")
        cu = os.path.join(d, "kernel.cu")
        with open(h, "w") as f:
            f.write("#ifndef MLA_A  // a\n#define MLA_A 0\n#endif\n#define MLA_B 0\n#ifndef MLA_C\n#define MLA_C 1\n#endif\n")
        with open(cu, "w") as f:
            f.write("x\n#ifndef MLA_D\n#define MLA_D 0  // d\n#endif\n#ifndef MLA_C\n#define MLA_C 1\n#endif\n"
                    "#ifndef MLA_F\n#define MLA_F (64 * 2)\n#endif\n")
        for flags, why in ((["-DMLA_B=1"], "0 defaults"), (["-DMLA_F=1"], "0 defaults"), (["-DMLA_A"], "not -DNAME=VALUE"), (["-O3"], "not -DNAME=VALUE"),
                           (["-DMLA_C=2"], "2 defaults"), (["-DMLA_A=1", "-DMLA_E=1"], "MLA_E has 0 defaults")):
            try:
                apply([h, cu], flags)
            except ValueError as e:
                assert why in str(e), (flags, e)
                continue
            raise AssertionError(f"applied {flags}")
        with open(h) as f:
            assert f.read().startswith("#ifndef MLA_A  // a\n#define MLA_A 0\n"), "a failed apply changed a file"
        apply([h, cu], ["-DMLA_A=1", "-DMLA_D=16"])
        with open(h) as f, open(cu) as g:
            assert f.read() == "#ifndef MLA_A  // a\n#define MLA_A 1\n#endif\n#define MLA_B 0\n#ifndef MLA_C\n#define MLA_C 1\n#endif\n"
            assert g.read() == ("x\n#ifndef MLA_D\n#define MLA_D 16  // d\n#endif\n#ifndef MLA_C\n#define MLA_C 1\n#endif\n"
                                "#ifndef MLA_F\n#define MLA_F (64 * 2)\n#endif\n")
        assert apply([h], ["-DMLA_C=1"]) == []
        # The command lines run.sh uses, their output kept out of the test's.
        md = os.path.join(d, "ab.md")
        with open(md, "w") as f:
            f.write("\n".join(table))
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            assert main(["promote.py", "apply", "-f", h, "-f", cu, "--", "-DMLA_A=0"]) == 0
            assert main(["promote.py", "apply", "-f", h, "--", "-DMLA_B=1"]) == 2
            assert main(["promote.py", "pick", md, "head"]) == 0
            assert out.getvalue().endswith("\nfast\n"), out.getvalue()
            assert main(["promote.py", "pick", md, "head", "--margin", "0.2"]) == 3
            assert main(["promote.py", "pick", md, "nobody"]) == 2
        with open(h) as f:
            assert f.read().startswith("#ifndef MLA_A  // a\n#define MLA_A 0\n")
    print("promote self-test: ok")


def finite(text):
    """argparse type: a finite float."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def main(argv):
    parser = argparse.ArgumentParser(prog="promote.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p_pick = commands.add_parser("pick", help="the build to promote, from an A/B table")
    p_pick.add_argument("ab_md", help="the ab stage's table (r/ab.md)")
    p_pick.add_argument("base", help="the label the others are compared with")
    p_pick.add_argument("--margin", type=finite, default=0.02, help="the least gain on the geometric mean (default 0.02)")
    p_pick.add_argument("--floor", type=finite, default=0.95, help="the lowest speed-up any shape may have (default 0.95)")
    p_apply = commands.add_parser("apply", help="make -DNAME=VALUE flags the sources' defaults")
    p_apply.add_argument("-f", "--file", dest="files", action="append", required=True, help="a source with defaults (repeatable)")
    p_apply.add_argument("flags", nargs="*", help="-DNAME=VALUE, after --")
    commands.add_parser("self-test", help="check this script")
    args = parser.parse_args(argv[1:])
    try:
        if args.command == "self-test":
            self_test()
        elif args.command == "apply":
            apply(args.files, args.flags)
        else:
            with open(args.ab_md) as f:
                times = parse(f)
            winner, report = pick(times, args.base, args.margin, args.floor)
            print("\n".join(report))
            print(winner or "none")
            return 0 if winner else 3
    except (OSError, ValueError) as e:
        print(f"promote {args.command}: {e}", file=sys.stderr)
        return 2
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv))
