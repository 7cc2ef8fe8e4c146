"""The ``transferkit`` command: a thin Typer layer over ``transferkit.pipeline``.

Heavy libraries are imported inside commands, so ``transferkit --help`` starts fast. Errors
caused by input print one line and exit with code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import dataclasses
import errno
import inspect
import io
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Transfer learning: choose a pretrained source, adapt it to your task, evaluate honestly.")

_state = {"debug": False}


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False) -> None:
    _state["debug"] = debug


Opt = typer.Option


def fit(ctx: typer.Context, data: Path, source: str, out: Path, config: Path | None, quiet: bool, **options) -> None:
    """Transfer a source model to your data, train, evaluate on the test split next to a baseline."""
    given = {k: v for k, v in options.items()  # typer's own click: its ParameterSource, compared by name
             if getattr(ctx.get_parameter_source(k), "name", "DEFAULT") != "DEFAULT"}
    _fit_and_show(data, source, out, _given_options(given), config, quiet)


def _fit_parameters() -> list[inspect.Parameter]:
    """``fit``'s CLI parameters: the data, source, output and config arguments, then one flag per
    ``FitConfig`` option, generated from its declaration (type, help, group, default), in the help
    panels of ``GROUPS``; the common path (data, --source, --strategy, --out) leads its panel.

    Each flag's default is the option's, so ``--help`` shows it; ``fit`` passes on only the flags
    given on the command line (a default must not override a ``--config`` file's value)."""
    from transferkit.config import GROUPS, FitConfig, flag_name

    def param(name: str, annotation, default) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)

    fixed = [
        ("Data", param("data", Annotated[Path, typer.Argument(
            help="Image or audio folder (one subfolder per class), text table (csv/tsv/jsonl/parquet) or series.")],
            inspect.Parameter.empty)),
        ("Source", param("source", Annotated[str, Opt(
            help="Source id, e.g. mobilenet_v2, minilm, timm:resnet18, run:DIR, or auto.", rich_help_panel="Source")],
            "mobilenet_v2")),
        ("Output", param("out", Annotated[Path, Opt(
            help="Run directory to write (a new or empty folder, or an earlier run with --overwrite).",
            rich_help_panel="Output")], Path("runs/latest"))),
        ("Output", param("config", Annotated[Optional[Path], Opt(
            help="YAML/JSON file of options; flags override it.", rich_help_panel="Output")], None)),
        ("Output", param("quiet", Annotated[bool, Opt(
            "--quiet", help="No progress bars or progress lines.", rich_help_panel="Output")], False)),
    ]
    hints, generated = typing.get_type_hints(FitConfig), []
    for f in dataclasses.fields(FitConfig):
        flag, group = flag_name(f.name), f.metadata["group"]
        if not flag:
            continue
        hint = hints[f.name]
        kind = typing.get_args(hint)[0] if typing.get_origin(hint) in (types.UnionType, typing.Union) else hint
        names = (f"--{flag}/--no-{flag}",) if kind is bool else (f"--{flag}",)
        default = None if f.default is dataclasses.MISSING else f.default  # lists and dicts: none (repeatable)
        option = Opt(*names, help=f.metadata["help"], rich_help_panel=group, show_default=default is not None)
        kind = list[str] if typing.get_origin(kind) in (list, dict) else kind
        generated.append((group, param(f.name, Annotated[Optional[kind], option], default)))
    ordered = sorted(fixed + generated, key=lambda item: GROUPS.index(item[0]))  # stable: fixed ones lead
    return [param("ctx", typer.Context, inspect.Parameter.empty), *(p for _, p in ordered)]


fit.__signature__ = inspect.Signature(_fit_parameters())
fit.__annotations__ = {p.name: p.annotation for p in fit.__signature__.parameters.values()}
app.command()(fit)


def _given_options(options: dict) -> dict:
    """The flags given on the command line as ``FitConfig`` values (lists split at commas)."""
    given = {k: v for k, v in options.items() if v is not None}
    for name, value in given.items():
        if isinstance(value, list):
            given[name] = [item.strip() for v in value for item in v.split(",") if item.strip()]
    if "task_weights" in given:
        given["task_weights"] = _parse_weights(given["task_weights"])
    return given


def _parse_weights(items: list[str]) -> dict[str, float]:
    from transferkit.errors import ConfigError

    weights = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"`--task-weight` takes NAME=WEIGHT, e.g. topic=0.5; got {item!r}.") from None
    return weights


def _fit_and_show(data: Path, source: str, out: Path, options: dict, config: Path | None, quiet: bool) -> None:
    from transferkit.config import FitConfig
    from transferkit.pipeline import fit as run_fit

    cfg = FitConfig.from_file(config, **options) if config else FitConfig.from_dict(options)
    run = run_fit(data, source=source, strategy=cfg.strategy, out=out, config=cfg, verbose=not quiet)
    from transferkit.engine import is_main_process

    if is_main_process():
        _show_result(run.metrics, out)


def _show_result(metrics: dict, out: Path) -> None:
    from transferkit.evaluation.report import baselines, verdict

    rows = [["transfer", f"{metrics['test_accuracy']:.4f}", f"{metrics['test_macro_f1']:.4f}",
             f"{metrics['train_seconds']:.1f}"]]
    for prefix, _, _ in baselines(metrics):  # named for what ran: "pixels_logreg baseline", "scratch baseline"
        rows.append([f"{metrics.get(prefix, 'no-transfer')} baseline", f"{metrics[prefix + '_test_accuracy']:.4f}",
                     f"{metrics[prefix + '_test_macro_f1']:.4f}", f"{metrics[prefix + '_seconds']:.1f}"])
    console = _console()
    skipped = metrics.get("data", {}).get("skipped", [])
    if skipped:
        shown = ", ".join(f"{s['file']} ({s['reason']})" for s in skipped[:10])
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        _say(console, f"Skipped {len(skipped)} bad example(s) (--skip-bad): {shown}{more}.")
    _table(console, f"{metrics['source']} · {metrics['strategy']}",
           [("", "name"), ("test accuracy", "number"), ("test macro-F1", "number"), ("seconds", "number")], rows)
    _say(console, verdict(metrics).replace("**", ""))
    _say(console, f"Run directory: {out} (report.html, report.md, metrics.json, model.safetensors)")


# -- what the commands print: readable at 80 columns, plain when the output is not a terminal -----------
#
# A table's columns are names (source ids, strategies, row labels: one whole line each), numbers
# (never split; their header may wrap at spaces) or text (wraps at spaces, a word is never split).
# When the columns do not fit the console side by side, the table is printed in parts, each
# repeating the first ``key`` columns, so every row of every part still starts with its whole
# name. On a terminal a table has rich's box; otherwise (a log file, a pipe) it has no box drawing,
# no colour and no trailing spaces: columns separated by spaces, the header underlined with dashes.
# Text wraps at spaces, and a line with a word wider than the console (a long path) is not wrapped.

#: The box of a table printed to a file or a pipe: spaces between columns, dashes under the header.
_PLAIN_BOX_LINES = "    \n    \n -- \n    \n    \n -- \n    \n    \n"


def _console():
    from rich.console import Console

    return Console(highlight=False)


def _say(console, text: str, style: str = "") -> None:
    """``text`` as given (no markup), wrapped at spaces; a word wider than the console (a long
    path) leaves the text on one line instead of being split."""
    from rich.cells import cell_len
    from rich.text import Text

    _emit(console, Text(text, style=style), soft_wrap=any(cell_len(word) > console.width for word in text.split()))


def _emit(console, renderable, width: int | None = None, soft_wrap: bool = False) -> None:
    """Prints ``renderable``; not on a terminal, without colour or trailing spaces, at ``width``
    (default the console's; a file has no width, so more makes longer lines, never a split name)."""
    if console.is_terminal:
        console.print(renderable, soft_wrap=soft_wrap)
        return
    from rich.console import Console

    file = io.StringIO()
    Console(file=file, width=max(console.width, width or 0), color_system=None, force_terminal=False,
            highlight=False).print(renderable, soft_wrap=soft_wrap)
    console.file.write("".join(line.rstrip() + "\n" for line in file.getvalue().splitlines()))
    console.file.flush()


def _cell_widths(header: str, cells: list[str], kind: str) -> tuple[int, int]:
    """(narrowest, natural) width of a column: names and numbers never split, text at spaces only."""
    from rich.cells import cell_len

    def longest_word(text: str) -> int:
        return max((cell_len(w) for w in text.split()), default=0)

    whole = max((cell_len(c) for c in cells), default=0)
    natural = max(whole, cell_len(header))
    if kind == "name":  # one line, header included
        return natural, natural
    if kind == "number":  # the header may wrap at its spaces
        return max(whole, longest_word(header)), natural
    return max([longest_word(header), *(longest_word(c) for c in cells)]), natural


def _table(console, title: str | None, columns: list[tuple[str, str]], rows: list[list[str]], *, key: int = 1,
           header: bool = True) -> None:
    """Prints ``rows`` under ``columns`` ((header, "name" | "number" | "text")) as the comment above says.

    ``header=False``: a list without a header or box (``transferkit strategies``)."""
    from rich.text import Text

    plain = not console.is_terminal
    if title:
        _say(console, title, style="bold")
    bounds = [_cell_widths(h, [r[i] for r in rows], kind) for i, (h, kind) in enumerate(columns)]
    for n, part in enumerate(_parts(bounds, key, console.width, plain, header)):
        if n:
            console.print()
        overhead = _overhead(len(part), plain, header)
        room = console.width - overhead
        widths = _fit_widths([bounds[i] for i in part], room)
        kinds = [columns[i][1] for i in part]
        if sum(widths) > room and not plain:  # a name wider than the terminal: it folds, the numbers stay whole
            widths = _squeeze_names(widths, kinds, sum(widths) - room)
        table = _rich_table(plain, header)
        for i, width in zip(part, widths):
            name, kind = columns[i]
            table.add_column(name, justify="right" if kind == "number" else "left", width=width,
                             no_wrap=kind == "name", overflow="fold")
        for row in rows:
            table.add_row(*(Text(row[i]) for i in part))
        _emit(console, table, width=sum(widths) + overhead)


def _squeeze_names(widths: list[int], kinds: list[str], excess: int) -> list[int]:
    """``widths`` less ``excess``, taken from the widest name columns (which then fold)."""
    widths = list(widths)
    for _ in range(excess):
        names = [i for i, kind in enumerate(kinds) if kind == "name" and widths[i] > 1]
        if not names:
            break
        widest = max(names, key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def _rich_table(plain: bool, header: bool):
    from rich import box
    from rich.table import Table

    if not header:
        return Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
    if plain:
        return Table(box=box.Box(_PLAIN_BOX_LINES, ascii=True), show_edge=False, pad_edge=False,
                     header_style="", title_style="")
    return Table()


def _overhead(columns: int, plain: bool, header: bool) -> int:
    """Characters a table adds to its columns' widths: padding, separators, edges."""
    if not header:
        return 2 * (columns - 1)  # two spaces between columns
    if plain:
        return 3 * (columns - 1)  # a space of padding, a blank separator, a space of padding
    return 3 * columns + 1  # a padding space either side of each column, a line between and at both edges


def _parts(bounds: list[tuple[int, int]], key: int, width: int, plain: bool, header: bool) -> list[list[int]]:
    """The columns of each printed part: all at once when they fit at their narrowest, else the
    first ``key`` columns and as many of the others as fit (at least one), part after part."""
    every = list(range(len(bounds)))
    if sum(b[0] for b in bounds) + _overhead(len(bounds), plain, header) <= width or len(bounds) <= key + 1:
        return [every]
    parts, current = [], every[:key]
    for i in every[key:]:
        trial = [*current, i]
        if len(current) > key and sum(bounds[j][0] for j in trial) + _overhead(len(trial), plain, header) > width:
            parts.append(current)
            current = [*every[:key], i]
        else:
            current = trial
    return [*parts, current]


def _fit_widths(bounds: list[tuple[int, int]], room: int) -> list[int]:
    """Column widths within ``room``: each its natural width when all fit, else at least its
    narrowest, the room left shared among the columns that can wrap in proportion to what they lack."""
    if sum(b[1] for b in bounds) <= room:
        return [b[1] for b in bounds]
    widths = [b[0] for b in bounds]
    spare, lacking = room - sum(widths), [b[1] - b[0] for b in bounds]
    if spare > 0 and sum(lacking):
        total = sum(lacking)
        widths = [w + spare * lack // total for w, lack in zip(widths, lacking)]
    return widths


@app.command()
def demo(
    out: Annotated[Path, Opt(help="Run directory to write.")] = Path("runs/demo"),
    quiet: Annotated[bool, Opt("--quiet", help="No progress bars.")] = False,
) -> None:
    """Run the whole flow on the embedded digits dataset (under a minute on 2 CPU cores)."""
    from transferkit.datasets import DEMO

    typer.echo(f"Demo: {DEMO.description}\nSource {DEMO.source}, strategy {DEMO.options['strategy']}, writing {out}")
    _fit_and_show(DEMO.path, DEMO.source, out, {**DEMO.options, "overwrite": True}, None, quiet)  # rerunnable


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run directory written by `transferkit fit`.")],
    inputs: Annotated[list[str], typer.Argument(help="Files/folders (images, audio clips, .npy series), or texts / a text table for text runs.")],
    output: Annotated[Path, Opt(help="CSV to write (replaced atomically; formula-like cells are escaped).")] = Path("predictions.csv"),
    skip_bad: Annotated[bool, Opt("--skip-bad", help="Skip bad inputs (listed) instead of failing.")] = False,
) -> None:
    """Predict labels and class probabilities; writes a CSV."""
    import time

    from transferkit.runs import load_run
    from transferkit.predict import check_output, expand_inputs, write_predictions

    check_output(output)  # before the model loads
    loaded = load_run(run)
    examples, skipped = expand_inputs(inputs, loaded, skip_bad=skip_bad)
    started = time.perf_counter()
    proba = {task: loaded.predict_proba(examples, task) for task in loaded.classes}
    seconds = time.perf_counter() - started
    write_predictions(output, examples, proba, loaded.classes)
    if skipped:
        shown = ", ".join(f"{where} ({reason})" for where, reason in skipped[:10])
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        typer.echo(f"Skipped {len(skipped)} bad input(s) (--skip-bad): {shown}{more}.")
    typer.echo(f"Wrote {len(examples)} predictions to {output} ({len(examples) / max(seconds, 1e-9):.1f} examples/s).")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory written by `transferkit fit`.")],
    data: Annotated[Path, typer.Argument(help="Data with the run's classes.")],
    split: Annotated[str, Opt(help="Split to evaluate: train, val or test.")] = "test",
) -> None:
    """Evaluate a run on a split of a dataset."""
    from transferkit.errors import ConfigError
    from transferkit.runs import load_run

    if split not in ("train", "val", "test"):
        raise ConfigError(f"`--split` must be train, val or test; got {split!r}.")
    m = load_run(run).evaluate(data, split)
    typer.echo(f"{split} accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}")


@app.command()
def soup(
    runs: Annotated[list[Path], typer.Argument(help="Run directories fine-tuned from one source on one task.")],
    data: Annotated[Path, Opt(help="The task's data: validation picks ingredients, test scores the soup.")],
    out: Annotated[Path, Opt(help="Run directory for the soup.")] = Path("runs/soup"),
    greedy: Annotated[bool, Opt("--greedy/--uniform", help="Greedy soup (default) or uniform average.")] = True,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an earlier run in --out.")] = False,
) -> None:
    """Average the weights of several fine-tuned runs (model soup) and evaluate it."""
    from transferkit.pipeline import soup as make_soup

    result = make_soup(runs, data, out=out, greedy=greedy, overwrite=overwrite)
    info = result.metrics["soup"]
    typer.echo(f"{info['kind']} soup of {len(info['used'])} of {len(runs)} runs: "
               f"test accuracy {result.metrics['test_accuracy']:.4f} "
               f"(ingredients: {', '.join(f'{v:.4f}' for v in info['ingredient_test_accuracy'].values())}). "
               f"Written to {out}.")


@app.command()
def sources() -> None:
    """List the packaged sources and the id schemes for hub and local models."""
    from transferkit.sources import list_sources

    console = _console()
    _table(console, "Packaged sources (offline, real pretrained weights)",
           [("id", "name"), ("modality", "name"), ("architecture", "text"), ("features", "number"),
            ("weights", "text"), ("licence", "text")],
           [[s.name, s.modality, s.architecture, str(s.feature_dim or "-"), s.weights, s.license]
            for s in list_sources()])
    _say(console, "Schemes: timm:<name>  torchvision:<name>  hf:<hub id or dir>  st:<id or dir>  "
         "file:<model.safetensors> (+ .json naming the architecture)  run:<run dir>  "
         "seq:<cnn1d|lstm|gru|transformer>[?channels=N] (built-in, for time series).  "
         "Append @random to any id for the same architecture with random weights.")


@app.command()
def strategies() -> None:
    """List the transfer strategies."""
    from transferkit.strategies import list_strategies

    _table(_console(), None, [("strategy", "name"), ("summary", "text")],
           [[name, summary] for name, summary in list_strategies()], header=False)


@app.command()
def audit(
    data: Annotated[Path, typer.Argument(help="Image folder, text table, audio or series folder.")],
    candidates: Annotated[str, Opt(help="Comma-separated source ids, or 'all' (every packaged source of the data's modality).")] = "all",
    strategies: Annotated[str, Opt(help="Comma-separated strategies (see `transferkit strategies`).")] = "linear_probe,lp_ft,full",
    seeds: Annotated[int, Opt(help="Seeds per pair (0, 1, ...).")] = 3,
    out: Annotated[Path, Opt(help="Folder for audit.json, audit.md and audit.csv (rerun to continue a killed audit).")] = Path("runs/audit"),
    config: Annotated[Optional[Path], Opt(help="YAML/JSON file of `fit` options every run shares.")] = None,
    quiet: Annotated[bool, Opt("--quiet", help="Print only the table.")] = False,
) -> None:
    """Train every (source, strategy) pair at every seed: the brute-force check of an auto choice."""
    from transferkit.audit import audit as run_audit
    from transferkit.config import FitConfig
    from transferkit.data import detect_modality
    from transferkit.ranking import default_candidates

    ids = [s.strip() for s in candidates.split(",") if s.strip()]
    if ids == ["all"]:
        ids = default_candidates(detect_modality(data))
    shared = FitConfig.from_file(config) if config is not None else None
    result = run_audit(data, ids, [s.strip() for s in strategies.split(",") if s.strip()], seeds=seeds, out=out,
                       config=shared, verbose=not quiet)
    console = _console()
    _table(console, f"Audit: every pair fully trained, {result['seeds']} seed(s)",
           [("rank", "number"), ("source", "name"), ("strategy", "name"), ("test accuracy", "number"),
            ("± std", "number"), ("seconds", "number")],
           [[str(p["rank"]), p["source"], p["strategy"], f"{p['test_accuracy']:.4f}", f"{p['test_std']:.4f}",
             f"{p['seconds']:.1f}"] for p in result["pairs"]], key=3)
    total = sum(c["seconds"] for c in result["cells"])
    _say(console, f"Total training time {total:.0f} s over {len(result['cells'])} runs.")
    _say(console, f"Audit written to {out} (audit.md, audit.json, audit.csv)")


@app.command()
def rank(
    data: Annotated[Path, typer.Argument(help="Image folder (one subfolder per class) or text table.")],
    sources: Annotated[str, Opt(help="Comma-separated source ids, or 'all' (every packaged source of the data's modality).")] = "all",
    scores: Annotated[str, Opt(help="Comma-separated scorers (see `transferkit scorers`); the first one ranks.")] = "logme",
    out: Annotated[Path, Opt(help="Folder for ranking.json, ranking.md and ranking.png.")] = Path("runs/rank"),
    controls: Annotated[bool, Opt("--controls", help="Add ID@random (random-init) negative controls for each source.")] = False,
    image_size: Annotated[Optional[int], Opt(help="Image side in pixels (default: each source's own).")] = None,
    batch_size: Annotated[int, Opt(help="Examples per forward pass.")] = 32,
    splits: Annotated[str, Opt(help="Splits scored: 'train' or 'train,val' (never test).")] = "train",
    cache_dir: Annotated[Optional[Path], Opt(help="Feature cache (default $TRANSFERKIT_CACHE or ~/.cache/transferkit/features).")] = None,
    no_cache: Annotated[bool, Opt("--no-cache", help="Recompute features; read and write no cache.")] = False,
    seed: Annotated[int, Opt(help="Seed for the splits and @random weights.")] = 0,
    text_column: Annotated[str, Opt(help="Text column of a table.")] = "text",
    label_column: Annotated[str, Opt(help="Label column of a table.")] = "label",
    quiet: Annotated[bool, Opt("--quiet", help="Print only the table.")] = False,
) -> None:
    """Rank source models for your data by transferability scores (table, ranking.json, bar chart)."""
    from transferkit.config import FitConfig
    from transferkit.data import detect_modality
    from transferkit.errors import ConfigError
    from transferkit.outdir import OutputDir
    from transferkit.scoring import get_scorer
    from transferkit.ranking import check_source_ids, check_splits, default_candidates

    names = [s.strip() for s in scores.split(",") if s.strip()]
    split_names = check_splits([s.strip() for s in splits.split(",") if s.strip()])
    for name in names:
        get_scorer(name)  # did-you-mean errors before any data or model is loaded
    if image_size is not None:
        FitConfig(image_size=image_size)  # same range check as `fit`
    ids = [s.strip() for s in sources.split(",") if s.strip()]
    if ids == ["all"]:
        ids = default_candidates(detect_modality(data))
    if not ids:
        raise ConfigError(f"`--sources` needs source ids or 'all'; got {sources!r}.")
    if controls:
        ids += [f"{i}@random" for i in ids if not i.endswith("@random")]
    check_source_ids(ids)  # did-you-mean errors before the data is read
    from transferkit.engine import is_main_process

    # Under `torchrun` / `accelerate launch` every process extracts its shard; the main one writes.
    with OutputDir.claim(out, "ranking", inputs=[data], lock=is_main_process()) as outdir:
        _rank_and_show(data, ids, names, split_names, outdir, batch_size=batch_size, cache_dir=cache_dir,
                       image_size=image_size, use_cache=not no_cache, seed=seed, text_column=text_column,
                       label_column=label_column, quiet=quiet)


def _rank_and_show(data: Path, ids: list[str], names: list[str], split_names: list[str], outdir, *, batch_size: int,
                   cache_dir: Path | None, image_size: int | None, use_cache: bool, seed: int, text_column: str,
                   label_column: str, quiet: bool) -> None:
    from transferkit.data import load_task_data
    from transferkit.ranking import rank_sources, score_names, write_ranking

    task = load_task_data(data, text_column=text_column, label_column=label_column, seed=seed)
    console = _console()
    if not quiet and outdir.locked:
        n = sum(len(task.splits()[s]) for s in split_names)
        _say(console, f"Ranking {len(ids)} source(s) on {n} {task.modality} examples "
             f"({'+'.join(split_names)}) by {', '.join(names)}")
    rows = rank_sources(task, ids, names, batch_size=batch_size, cache_dir=cache_dir, image_size=image_size,
                        splits=split_names, use_cache=use_cache, seed=seed, verbose=not quiet)
    if not outdir.locked:  # another process of a distributed ranking writes the folder
        return
    paths = write_ranking(rows, outdir, title=f"{Path(data).name}: {len(task.classes)} classes")
    columns = [("rank", "number"), ("source", "name"), *((n, "number") for n in score_names(rows)),
               ("seconds", "number")]
    cells = [[str(row["rank"]), row["source"],
              *("n/a*" if row.get(n) is None else f"{row[n]:.4f}" for n in score_names(rows)),
              f"{row['seconds']:.1f}"] for row in rows]
    _table(console, f"Source ranking by {names[0]} (higher is better)", columns, cells, key=2)
    for row in rows:
        for note in row["notes"]:
            _say(console, f"* {row['source']}: {note}")
    _say(console, f"Wrote {paths['json']}, {paths['markdown'].name} and {paths['png'].name}")


@app.command()
def scorers() -> None:
    """List the transferability scorers (for `transferkit rank --scores`)."""
    from transferkit.scoring import list_scorers

    rows = [[name, summary + ("  [needs a source head]" if kind == "probabilities" else "")]
            for name, summary, kind in list_scorers()]
    _table(_console(), None, [("scorer", "name"), ("summary", "text")], rows, header=False)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run directory written by `transferkit fit`.")],
    fmt: Annotated[str, Opt("--format", help="sentence-transformers or st (text runs), hf (text runs "
                                             "with cls pooling), torchvision or timm (image runs), or onnx.")],
    out: Annotated[Path, Opt(help="Directory to write (model, model card README.md, preprocessing.json).")],
) -> None:
    """Export a run for sentence-transformers, transformers, torchvision, timm or ONNX runtimes, with a model card."""
    from transferkit.export import export_run

    result = export_run(run, fmt, out)
    typer.echo(result.summary())
    if result.max_abs_diff is not None and result.max_abs_diff > 1e-4:
        typer.echo(f"warning: the export differs from the run by up to {result.max_abs_diff:.2e} in the logits.",
                   err=True)


#: Errors of the user's file system (full disk, read-only folder, ...): one line, not a traceback.
@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run directories written by `transferkit fit` (two or more).")],
    out: Annotated[Path, Opt(help="Folder for compare.html and compare.md (a new or empty folder, or an earlier "
                                  "comparison, which is replaced).")] = Path("runs/compare"),
) -> None:
    """Compare runs: metrics with intervals, cost, learning curves, per-class recall, which run to keep."""
    from transferkit.compare import compare_runs, keep_sentence

    result = compare_runs(runs, out)
    typer.echo(keep_sentence(result))
    for note in result["notes"]:
        typer.echo(f"Note: {note}")
    typer.echo(f"Comparison of {len(runs)} runs written to {out} (compare.html, compare.md).")


_FILE_SYSTEM_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                                 errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.ENOENT, errno.EEXIST,
                                 errno.EMFILE, errno.EFBIG})


def _describe_os_error(e: OSError) -> str:
    where = f" ({e.filename!r})" if e.filename else ""
    fix = {errno.ENOSPC: " Free some space, or write to another folder (`--out`, `--output`).",
           errno.EDQUOT: " Free some space, or write to another folder (`--out`, `--output`).",
           errno.EROFS: " Write to another folder (`--out`, `--output`)."}.get(e.errno, "")
    return f"{e.strerror or e}{where}.{fix}"


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app; input and usage errors print one line and exit with code 2."""
    from transferkit.errors import TransferKitError

    argv = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=argv, standalone_mode=False, prog_name="transferkit")
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        code = 130
    except typer.TyperException as e:  # typer's own click: unknown flag, bad value, missing argument
        e.show()
        code = 2
    except (TransferKitError, OSError) as e:
        if _state["debug"] or "--debug" in argv or (isinstance(e, OSError) and e.errno not in _FILE_SYSTEM_ERRORS):
            raise
        typer.echo(f"error: {e if isinstance(e, TransferKitError) else _describe_os_error(e)}", err=True)
        code = 2
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
