"""``reidscale <command>``: the one entry point every job shares.

Commands take ``--config FILE.yaml`` and dotted overrides (``--eval.rerank.k1 30``) on top of the typed
defaults of the sections they read (``reidscale.jobs.roots``); ``reidscale config COMMAND`` lists them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reidscale.config import ConfigError, describe, load_config, write_run_record
from reidscale.jobs.roots import canonical_command, every_command_root, root_for

WEIGHTS_HELP = "backbone weights file, e.g. runs/<name>/backbone.pt (shorthand for --model.weights FILE)"


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="YAML config file (see configs/)")
    parser.epilog = (
        "Any config option can be overridden as --section.key VALUE; `reidscale config COMMAND` lists them."
    )


def _split_overrides(
    parser: argparse.ArgumentParser, argv: Sequence[str]
) -> tuple[argparse.Namespace, list[str]]:
    args, rest = parser.parse_known_args(argv)
    stray = [tok for tok in rest if tok.startswith("--") and "." not in tok.split("=", 1)[0]]
    if stray:
        parser.error(f"unrecognised argument(s): {' '.join(stray)}")
    return args, rest


def cmd_info(args: argparse.Namespace) -> int:
    from reidscale.info import collect_info, format_info

    report = collect_info()
    print(json.dumps(report, indent=2) if args.json else format_info(report))
    return 0


def cmd_config(args: argparse.Namespace, command_name: str | None, overrides: list[str]) -> int:
    from reidscale.config import dump_yaml
    from reidscale.methods import methods_of

    root = every_command_root() if command_name is None else root_for(command_name)
    if args.resolved:
        print(dump_yaml(load_config(root, args.config, overrides)), end="")
        return 0
    for key, type_name, doc in describe(root):
        print(f"--{key:<32} {type_name:<28} {doc}")
    if command_name is not None:
        for spec in methods_of(canonical_command(command_name)):
            print(f"method {spec.name!r} of {spec.command}: {spec.description}")
    return 0


def cmd_evaluate(args: argparse.Namespace, overrides: list[str]) -> int:
    """Evaluate a features file; all or nothing: the features are read, the metrics computed and the rank
    lists drawn in memory before the first file is written, so a failed evaluate leaves the files of an
    earlier one (results, config, run record, metrics log, PNG) as they were."""
    from reidscale.evaluation.evaluator import (
        evaluate_feature_set,
        format_results_table,
        rank_list_image,
        results_payload,
    )
    from reidscale.evaluation.features import load_feature_file
    from reidscale.evaluation.visualize import write_png
    from reidscale.tracking import build_tracker
    from reidscale.tracking.from_config import tracker_from_config
    from reidscale.utils.io import atomic_write_json

    if args.rerank:
        overrides = [*overrides, "--eval.rerank.enabled", "true"]
    if args.visualize is not None:
        overrides = [*overrides, "--eval.num_visualize", str(args.visualize)]
    config = load_config(root_for("evaluate"), args.config, overrides)
    features = load_feature_file(args.features)
    output = Path(args.output)
    stem = output.with_suffix("")
    # the progress bar only: the full tracker appends to the metrics log, so it starts once all is computed
    display_backends = [name for name in config.tracking.backends if name == "console"]
    with build_tracker(
        display_backends, output.parent, config.run.name, show_progress=config.tracking.progress
    ) as display:
        metrics = evaluate_feature_set(features, config.eval, progress=display.progress)
    rank_lists = rank_list_image(features, config.eval) if config.eval.num_visualize > 0 else None
    payload = results_payload(metrics, config.eval)
    print(
        f"{features.num_query} queries x {features.num_gallery} gallery, metric={config.eval.metric}"
        f"{', re-ranked' if config.eval.rerank.enabled else ''}"
    )
    print(format_results_table(metrics))
    atomic_write_json(output, payload)
    write_run_record(stem, config)
    print(f"results written to {output}")
    png = None if rank_lists is None else write_png(output.parent / f"{stem.name}.ranklist.png", rank_lists)
    tracker = tracker_from_config(
        config, output.parent, output.parent / f"{stem.name}.metrics.jsonl", {"features": str(args.features)}
    )
    with tracker:
        summary = {"eval/mAP": metrics.mAP, "eval/mINP": metrics.mINP}
        summary.update({f"eval/R{r}": metrics.cmc[r - 1] for r in (1, 5, 10) if r <= len(metrics.cmc)})
        tracker.log(summary, step=0)
        if png is not None:
            tracker.log_image("eval/rank_list", png, step=0)
            print(f"rank lists drawn to {png}")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from reidscale.data.manifests import MANIFEST_KINDS, load_manifest, manifest_options
    from reidscale.data.pretrain_set import resolve_decode_device
    from reidscale.data.shards.pack import PackSettings, pack_manifest

    kind, path = args.manifest
    if kind not in MANIFEST_KINDS:
        raise ValueError(f"--manifest KIND must be one of {MANIFEST_KINDS}, got {kind!r}")
    corpus = Path(path).resolve()
    corpus = corpus if corpus.is_dir() else corpus.parent
    out = args.out.resolve()
    if out.is_relative_to(corpus):
        raise ValueError(
            f"--out {args.out} lies inside the corpus folder {corpus}: pack into a folder of its own"
        )
    settings = PackSettings(
        size=(args.size[0], args.size[1]),
        quality=args.quality,
        records_per_shard=args.records_per_shard,
        decode_backend=args.decode_backend,
        decode_device=resolve_decode_device(args.decode_device),
        num_threads=args.threads,
        strict=args.strict,
    )
    options = {"strict": args.strict} if "strict" in manifest_options(kind) else {}
    manifest = load_manifest(kind, path, **options)
    skipped = len(manifest.skipped_entries)
    print(f"pack: {kind} manifest {path}: {len(manifest)} records ({skipped} skipped by the reader)")
    pack_manifest(manifest, args.out, {"kind": kind, "path": str(Path(path).resolve())}, settings)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from reidscale.data.synth import build_corpus

    bar = tqdm(desc="synth", unit="video", disable=None, file=sys.stderr)

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "videos":
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        summary = build_corpus(
            args.out,
            args.scale,
            seed=args.seed,
            codec=args.codec,
            progress=progress,
            overwrite=args.overwrite,
            workers=args.workers,
        )
    finally:
        bar.close()
    noise = ", ".join(f"{name} {count}" for name, count in summary.noise.items())
    print(
        f"{summary.scale} corpus (seed {summary.seed}, {summary.codec}) written to {summary.out_dir} "
        f"in {summary.seconds:.1f} s\n"
        f"  {summary.num_videos} videos, {summary.num_frames} frames, {summary.num_boxes} boxes, "
        f"{summary.num_tracklets} tracklets, {summary.num_identities} identities\n"
        f"  tracker noise: {noise}\n"
        f"  market/: {summary.num_market_images} images (identities disjoint from the videos)"
    )
    return 0


def cmd_finetune(args: argparse.Namespace, overrides: list[str]) -> int:
    from reidscale.jobs.train import run_training
    from reidscale.methods import method_spec
    from reidscale.utils.dist import get_rank

    config = load_config(root_for("finetune"), args.config, overrides)
    summary = run_training(config, method_spec("finetune", config.finetune.method))
    if summary.status == "stopped":
        return report_stopped(summary)
    if get_rank() == 0:
        print(f"fine-tuned {config.model.name} for {summary.steps} steps on {config.finetune.dataset}")
        print(format_metric_rows({"before": summary.before, "after": summary.after}))
        paths = summary.paths
        print(f"weights: {paths['weights']}\nfeatures: {paths['features']}\nresults: {paths['results']}")
    return 0


def cmd_pretrain(args: argparse.Namespace, overrides: list[str]) -> int:
    from reidscale.jobs.train import run_training
    from reidscale.methods import method_spec
    from reidscale.utils.dist import get_rank

    config = load_config(root_for("pretrain"), args.config, overrides)
    summary = run_training(config, method_spec("pretrain", config.pretrain.method))
    if summary.status == "stopped":
        return report_stopped(summary)
    if get_rank() == 0:
        print(f"pre-trained {config.model.name} ({config.pretrain.method}) for {summary.steps} steps")
        if summary.before or summary.after:
            term = "off" if config.eval.camera_penalty == 0 else f"on ({config.eval.camera_penalty})"
            where = f"{config.pretrain.eval_dataset} at {config.pretrain.eval_root}"
            print(f"{where} (test-time camera term {term}):")
            print(format_metric_rows({"before": summary.before, "after": summary.after}))
        for name, path in summary.paths.items():
            print(f"{name}: {path}")
    return 0


def report_stopped(summary: Any) -> int:
    """Print (rank 0) where a stopped run stands; the exit code: 0 after ``until_step`` (asked for), else
    128 + the signal (a stopped run is not a finished one)."""
    import signal

    from reidscale.utils.dist import get_rank

    if get_rank() == 0:
        print(
            f"stopped by {summary.stopped_by} after {summary.steps} steps; results.json says so and holds no "
            f"final weights. Continue with --train.checkpoint.resume auto ({summary.run_dir})"
        )
    if summary.stopped_by == "until_step":
        return 0
    names = {sig.name: sig.value for sig in signal.Signals}
    return 128 + names.get(summary.stopped_by or "", signal.SIGTERM)


def cmd_prebuild(args: argparse.Namespace) -> int:
    from reidscale.prebuild import prebuild_all

    results = prebuild_all()
    for result in results:
        print(result.line(), flush=True)
    return 1 if any(result.status == "failed" for result in results) else 0


def cmd_demo(args: argparse.Namespace, overrides: list[str]) -> int:
    from reidscale.jobs.demo import run_demo

    run_demo(args.out, args.data, overrides, port=args.port)
    return 0


def _with_weights(args: argparse.Namespace, overrides: list[str]) -> list[str]:
    """``overrides`` with ``--weights FILE`` (the shorthand of extract and export) as ``model.weights``."""
    return overrides if args.weights is None else [*overrides, "--model.weights", str(args.weights)]


def _trained_backbone(config: Any, command: str) -> Any:
    """``config.model``'s backbone with ``model.weights`` loaded (ValueError when none is given)."""
    from reidscale.models.config import backbone_from_config

    if config.model.weights is None:
        raise ValueError(
            f"{command} needs trained weights: pass --weights FILE or set model.weights "
            f"(e.g. --model.weights runs/<name>/backbone.pt)"
        )
    return backbone_from_config(config.model)


def cmd_extract(args: argparse.Namespace, overrides: list[str]) -> int:
    from reidscale.evaluation.extract import extract_to_file

    config = load_config(root_for("extract"), args.config, _with_weights(args, overrides))
    model = _trained_backbone(config, "extract")
    cfg = config.finetune
    height, width = config.model.input_size
    path = extract_to_file(
        model,
        cfg.dataset,
        cfg.dataset_root,
        args.output,
        args.batch_size,
        args.device,
        height=height,
        width=width,
        flip=cfg.flip_test,
    )
    print(f"features of {cfg.dataset} ({cfg.dataset_root}) written to {path}")
    return 0


def cmd_export(args: argparse.Namespace, overrides: list[str]) -> int:
    import dataclasses

    from reidscale.export import export_backbone

    config = load_config(root_for("export"), args.config, _with_weights(args, overrides))
    model = _trained_backbone(config, "export")
    img_size = config.model.input_size
    report = export_backbone(model, args.out, img_size=img_size, **dataclasses.asdict(config.export))
    print(json.dumps({key: str(value) for key, value in report.items()}, indent=2))
    return 0


def format_metric_rows(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per name, columns mAP R1 R5 R10 mINP in percent."""
    columns = ("mAP", "R1", "R5", "R10", "mINP")
    lines = ["|        | " + " | ".join(f"{c:>6}" for c in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, metrics in rows.items():
        cells = " | ".join(f"{100 * metrics.get(c, float('nan')):6.2f}" for c in columns)
        lines.append(f"| {name:<6} | {cells} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from reidscale.data.manifests import MANIFEST_KINDS

    parser = argparse.ArgumentParser(prog="reidscale", description="Large-scale person ReID pre-training.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    info = sub.add_parser("info", help="versions, GPUs, usable kernel backends and optional components")
    info.add_argument(
        "--json", action="store_true", help="print JSON (keys versions, gpus, backends, components)"
    )

    sub.add_parser(
        "prebuild",
        help="build once what would otherwise compile on first use (DeepSpeed's CPU op, the CUDA ops)",
    )
    config = sub.add_parser(
        "config", help="list the config options a command reads (all commands' without one), or resolve one"
    )
    config.usage = "reidscale config [COMMAND] [--resolved] [--config FILE] [--section.key VALUE ...]"
    config.description = (
        "COMMAND: pretrain, finetune, evaluate, extract, export or demo; without one, the options of every "
        "command. A training command also lists the methods it trains."
    )
    _add_config_args(config)
    config.add_argument(
        "--resolved", action="store_true", help="print the resolved YAML instead of the option list"
    )

    evaluate = sub.add_parser("evaluate", help="mAP / CMC / mINP of a feature file (standard ReID protocol)")
    _add_config_args(evaluate)
    evaluate.add_argument(
        "--features", required=True, type=Path, help=".pt or .npz with query/gallery feats+labels"
    )
    evaluate.add_argument("--output", required=True, type=Path, help="results JSON to write")
    evaluate.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (eval.rerank.*)")
    evaluate.add_argument(
        "--visualize",
        type=int,
        default=None,
        metavar="N",
        help="draw the top-10 rank lists of N queries (needs image paths in the features file)",
    )
    synth = sub.add_parser(
        "synth", help="build a synthetic multi-camera person-video corpus with ground truth"
    )
    synth.add_argument("--out", required=True, type=Path, help="output folder")
    synth.add_argument("--scale", default="tiny", choices=("tiny", "demo", "large"), help="corpus size")
    synth.add_argument("--seed", type=int, default=0, help="random seed (same seed, same corpus)")
    synth.add_argument("--codec", default="h264", choices=("h264", "vp9", "mjpeg"), help="video codec")
    synth.add_argument("--workers", type=int, default=1, help="processes rendering videos in parallel")
    synth.add_argument("--overwrite", action="store_true", help="replace an earlier corpus in --out")
    pack = sub.add_parser(
        "pack", help="pack a manifest's person crops into WebDataset JPEG shards for streaming pre-training"
    )
    pack.add_argument(
        "--manifest", nargs=2, required=True, metavar=("KIND", "PATH"),
        help=f"manifest reader ({', '.join(MANIFEST_KINDS)}) and its path",
    )  # fmt: skip
    pack.add_argument(
        "--out", required=True, type=Path, help="shard folder (resumed when it holds this pack)"
    )
    pack.add_argument(
        "--size", nargs=2, type=int, default=[256, 128], metavar=("H", "W"),
        help="size of the crops that are decoded and encoded (whole JPEG images are copied as they are)",
    )  # fmt: skip
    pack.add_argument("--quality", type=int, default=95, help="JPEG quality of encoded crops (1..100)")
    pack.add_argument("--records-per-shard", type=int, default=1000, help="manifest records per shard")
    pack.add_argument(
        "--decode-backend", default="auto", choices=("auto", "dali", "pyav"), help="video decoder"
    )
    pack.add_argument(
        "--decode-device",
        default="auto",
        choices=("auto", "cpu", "gpu"),
        help="DALI's device (auto: gpu if any)",
    )
    pack.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="decoding threads")
    pack.add_argument(
        "--strict", action="store_true",
        help="stop at the first unreadable manifest line or record (default: skip, count and name it)",
    )  # fmt: skip
    demo = sub.add_parser(
        "demo", help="the README's demo: synthetic corpus, 2-rank selective contrastive pre-training, mAP"
    )
    demo.add_argument("--out", type=Path, default=Path("outputs/demo"), help="run folder (results.json)")
    demo.add_argument(
        "--data", type=Path, default=None, help="synthetic corpus folder (default data/synth_demo)"
    )
    demo.add_argument(
        "--port", type=int, default=None, help="the launcher's rendezvous port (default: a free one)"
    )
    pretrain = sub.add_parser(
        "pretrain", help="unsupervised pre-training (selective contrastive learning) on videos or crops"
    )
    _add_config_args(pretrain)
    finetune = sub.add_parser(
        "finetune", help="BoT-style supervised fine-tuning on a Market-format dataset (DeepSpeed engine)"
    )
    _add_config_args(finetune)
    extract = sub.add_parser(
        "extract", help="query/gallery features of finetune.dataset with trained weights"
    )
    _add_config_args(extract)
    extract.add_argument("--weights", type=Path, default=None, help=WEIGHTS_HELP)
    extract.add_argument("--output", required=True, type=Path, help="features file to write (.pt or .npz)")
    extract.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    extract.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    export = sub.add_parser("export", help="plain backbone state_dict + ONNX (checked with onnxruntime)")
    _add_config_args(export)
    export.add_argument("--weights", type=Path, default=None, help=WEIGHTS_HELP)
    export.add_argument("--out", required=True, type=Path, help="output folder")
    for launched in (pretrain, finetune, extract, export):  # the deepspeed launcher appends --local_rank=N
        launched.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, overrides = _split_overrides(parser, argv)
    try:
        without_config = {"info": cmd_info, "prebuild": cmd_prebuild, "synth": cmd_synth, "pack": cmd_pack}
        if args.command in without_config:
            if overrides:
                parser.error(f"{args.command} takes no config overrides, got {' '.join(overrides)}")
            return without_config[args.command](args)
        if args.command == "config":
            command_name = overrides.pop(0) if overrides and not overrides[0].startswith("--") else None
            return cmd_config(args, command_name, overrides)
        handlers = {
            "demo": cmd_demo,
            "pretrain": cmd_pretrain,
            "finetune": cmd_finetune,
            "extract": cmd_extract,
            "export": cmd_export,
        }
        if args.command in handlers:
            return handlers[args.command](args, overrides)
        return cmd_evaluate(args, overrides)
    except (ConfigError, ValueError, OSError) as err:
        print(f"reidscale {args.command}: error: {err}", file=sys.stderr)
        return 2
