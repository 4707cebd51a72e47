"""fedstore.app: the App's checks, its checked callables, and loading apps by name."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedstore.app import App, TrainerContext, load_app
from fedstore.app_loader import parse_spec
from fedstore.errors import AppError, ConfigError, StrategyError
from fedstore.federation.strategies import FedAvg, Median

W = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}


def train(arrays: Mapping[str, Any], round: int, config: Mapping[str, Any]) -> Any:
    return {k: v + 1 for k, v in arrays.items()}, 5, {"loss": 0.5}


def evaluate(arrays: Mapping[str, Any]) -> dict[str, float]:
    return {"mean": float(np.mean(arrays["w"]))}


def make(**kw: Any) -> App:
    kw.setdefault("initial", W)
    kw.setdefault("train", train)
    return App(**kw)


# -- construction -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"initial": [1, 2]}, "App.initial must be a dict of numpy arrays or a function"),
        ({"initial": {}}, "App.initial is empty"),
        ({"initial": {"w": [1.0]}}, "App.initial: 'w' is a list, not a numpy array"),
        ({"train": 3}, "App.train must be a function train(arrays, round, config), got int"),
        ({"train": lambda a, r: a}, "App.train must take 3 argument(s)"),
        ({"trainer": lambda ctx: train}, "give App.train or App.trainer, not both"),
        ({"evaluate": "nope"}, "App.evaluate must be a function evaluate(arrays)"),
        ({"strategy": ""}, "App.strategy is empty"),
        ({"strategy": 3}, "App.strategy must be a strategy name or a Strategy instance"),
        ({"strategy": FedAvg(), "strategy_settings": {"x": 1}}, "go with a strategy name"),
        ({"strategy_settings": {"trim": [1]}}, "App.strategy_settings must be a dict"),
        ({"rounds": 0}, "App.rounds must be a whole number >= 1, got int 0"),
        ({"rounds": True}, "App.rounds must be a whole number >= 1"),
        ({"quorum": "2,x"}, "App.quorum: bad quorum '2,x'"),
        ({"quorum": 0}, "App.quorum must be a whole number >= 1"),
        ({"min_updates": 1.5}, "App.min_updates must be a whole number >= 1"),
        ({"round_timeout": float("nan")}, "App.round_timeout must be a number of seconds > 0"),
        ({"update_encoding": "int4"}, "App.update_encoding:"),
        ({"metadata": {"a": 1}}, "App.metadata must be a dict of text to text"),
        ({"targets": {"accuracy": "high"}}, "App.targets: metric 'accuracy' must be a number"),
        ({"baseline": 1}, "App.baseline must be a function baseline(rounds)"),
    ],
)
def test_a_bad_field_is_named(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(AppError) as err:
        make(**kw)
    assert message in str(err.value)
    assert isinstance(err.value, ConfigError)  # the CLI prints it as one line


def test_replace_checks_again() -> None:
    app = make()
    with pytest.raises(AppError, match="App.rounds"):
        dataclasses.replace(app, rounds=-1)


def test_defaults_and_strategy_choice() -> None:
    app = make(strategy="trimmed-mean", strategy_settings={"trim": 0.2})
    assert (app.rounds, app.quorum, app.update_encoding, app.label) == (10, 1, "float32", "app")
    s = app.load_strategy()
    assert s.name == "trimmed-mean" and s.settings()["trim"] == 0.2
    # settings alone are added to the app's own; a name replaces the app's choice
    assert app.load_strategy(None, {"trim": "0.1"}).settings()["trim"] == 0.1
    assert app.load_strategy("median").name == "median"
    with pytest.raises(StrategyError, match="unknown strategy 'nope'"):
        app.load_strategy("nope")
    median = Median()
    assert make(strategy=median).load_strategy() is median


# -- the checked callables ----------------------------------------------------------------


def test_initial_as_function_and_its_result_checked() -> None:
    assert make(initial=lambda: W).initial_arrays().keys() == W.keys()
    with pytest.raises(AppError, match=r"initial weights must be a dict .* got list"):
        make(initial=lambda: [1]).initial_arrays()

    def broken() -> dict[str, Any]:
        raise RuntimeError("no data here")

    with pytest.raises(AppError) as err:
        make(initial=broken, name="x").initial_arrays()
    assert "app x: initial() failed: RuntimeError: no data here (at test_app.py:" in str(err.value)
    assert isinstance(err.value.__cause__, RuntimeError)


def test_train_is_checked_every_round() -> None:
    fn = make().train_fn()
    new, n, metrics = fn(W, 1, {})
    assert n == 5 and metrics == {"loss": 0.5} and float(new["b"][0]) == 1.0

    def returns(value: Any) -> App:
        return make(train=lambda a, r, c: value, name="t")

    bad = [
        ((W, 1), "must return (arrays, num_samples, metrics), got tuple"),
        (([1], 1, {}), "the returned arrays must be a dict"),
        (({"w": W["w"]}, 1, {}), "changed the model's arrays: missing ['b']"),
        (({**W, "extra": W["b"]}, 1, {}), "extra ['extra']"),
        (({"w": W["w"].astype(np.float64), "b": W["b"]}, 1, {}), "array 'w' is float64[3, 2]"),
        (({"w": np.zeros(6, np.float32), "b": W["b"]}, 1, {}), "the round's model has float32"),
        ((W, -1, {}), "num_samples must be a whole number >= 0"),
        ((W, 2.5, {}), "num_samples must be a whole number >= 0"),
        ((W, 1, {"loss": "low"}), "metric 'loss' must be a number"),
        ((W, 1, [0.5]), "metrics must be a dict"),
    ]
    for value, message in bad:
        with pytest.raises(AppError) as err:
            returns(value).train_fn()(W, 3, {})
        assert message in str(err.value), value
        assert str(err.value).startswith("app t: train in round 3")
    # numpy integers and metric scalars are fine, None metrics mean none
    _, n, m = returns((W, np.int64(4), None)).train_fn()(W, 1, {})
    assert (n, m) == (4, {})
    _, _, m = returns((W, 1, {"acc": np.float32(0.5)})).train_fn()(W, 1, {})
    assert m == {"acc": 0.5}


def test_an_exception_in_train_names_the_round_and_line() -> None:
    def boom(arrays: Any, round: int, config: Any) -> Any:
        raise ValueError(f"bad batch in round {round}")

    with pytest.raises(AppError) as err:
        make(train=boom, name="mine").train_fn()(W, 7, {})
    line = str(err.value)
    assert line.startswith("app mine: train in round 7 failed: ValueError: bad batch in round 7")
    assert "(at test_app.py:" in line and "\n" not in line


def test_trainer_factory_gets_its_context() -> None:
    seen: list[TrainerContext] = []

    def factory(ctx: TrainerContext) -> Any:
        seen.append(ctx)
        return train

    app = App(initial=W, trainer=factory)
    app.train_fn(TrainerContext(2, 3, Path("/data")))(W, 1, {})
    app.train_fn()  # default: trainer 1 of 1
    assert seen == [TrainerContext(2, 3, Path("/data")), TrainerContext(1, 1, None)]
    with pytest.raises(AppError, match=r"App.trainer returned a bad train: .* got int"):
        App(initial=W, trainer=lambda ctx: 5).train_fn()
    with pytest.raises(AppError, match="cannot train: it has no App.train"):
        App(initial=W).train_fn()
    with pytest.raises(AppError, match="between 1 and the number of trainers"):
        TrainerContext(4, 3)


def test_evaluate_and_baseline_checked() -> None:
    app = make(evaluate=evaluate, baseline=lambda n: [{"mean": 0.1}] * n)
    ev = app.evaluate_fn()
    assert ev is not None and ev(W) == {"mean": 0.0}
    assert app.baseline_metrics(2) == [{"mean": 0.1}, {"mean": 0.1}]
    assert make().evaluate_fn() is None and make().baseline_metrics(3) == []
    bad = make(evaluate=lambda a: 0.9)
    with pytest.raises(AppError, match="evaluate's result must be a dict"):
        bad.evaluate_fn()(W)  # type: ignore[misc]
    with pytest.raises(AppError, match="baseline must return a list"):
        make(baseline=lambda n: 3).baseline_metrics(1)


# -- loading by name ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("pkg.mod:app", ("pkg.mod", "app", False)),
        ("pkg.mod", ("pkg.mod", "app", False)),
        ("pkg.mod:apps.small", ("pkg.mod", "apps.small", False)),
        ("path/to/file.py:obj", ("path/to/file.py", "obj", True)),
        ("file.py", ("file.py", "app", True)),
        ("/abs/x.py:app", ("/abs/x.py", "app", True)),
    ],
)
def test_parse_spec(spec: str, parsed: tuple[str, str, bool]) -> None:
    assert parse_spec(spec) == parsed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "no app given"),
        (":app", "no module or file before ':'"),
        ("mod:1x", "'1x' is not a Python name"),
        ("not a module:app", "neither a dotted module name nor a path"),
    ],
)
def test_malformed_specs(spec: str, message: str) -> None:
    with pytest.raises(AppError, match=message):
        parse_spec(spec)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


APP_FILE = """
    import numpy as np
    from fedstore.app import App
    from helper import SHAPE          # a module next to the app file

    def train(arrays, round, config):
        return dict(arrays), 1, {}

    app = App(initial={"w": np.zeros(SHAPE, np.float32)}, train=train, rounds=3)
    small = App(initial={"w": np.zeros(1, np.float32)}, train=train, name="tiny")

    class Apps:
        second = app

    def make(rounds: int = 2, scale: float = 1.0, fast: bool = False, tag="x"):
        assert isinstance(rounds, int) and isinstance(scale, float) and isinstance(fast, bool)
        return App(initial={"w": np.zeros(1, np.float32)}, train=train, rounds=rounds,
                   metadata={"tag": tag, "fast": str(fast), "scale": str(scale)})

    def not_an_app():
        return 42

    number = 7
"""


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _write(tmp_path / "proj" / "helper.py", "SHAPE = (2, 2)\n")
    _write(tmp_path / "proj" / "my_app.py", APP_FILE)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("helper", "my_app"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path / "proj"


def test_load_from_a_file_and_a_module(app_dir: Path) -> None:
    app = load_app("my_app.py", cwd=app_dir)  # relative to cwd, default object "app"
    assert app.rounds == 3 and app.initial_arrays()["w"].shape == (2, 2)
    assert app.name == "my_app:app"
    assert load_app(f"{app_dir}/my_app.py:small").name == "tiny"  # its own name is kept
    assert load_app(f"{app_dir}/my_app.py:Apps.second").rounds == 3
    mod = load_app("my_app:app", cwd=app_dir)  # the directory is searched as a module root
    assert mod.name == "my_app:app" and mod.rounds == 3


def test_load_a_factory_with_config(app_dir: Path) -> None:
    spec = f"{app_dir}/my_app.py:make"
    app = load_app(spec, config={"rounds": "5", "scale": "0.5", "fast": "yes", "tag": "t"})
    assert app.rounds == 5 and app.metadata == {"tag": "t", "fast": "True", "scale": "0.5"}
    assert load_app(spec).rounds == 2
    with pytest.raises(AppError, match="no config 'round'; it accepts: fast, rounds, scale, tag"):
        load_app(spec, config={"round": "5"})
    with pytest.raises(AppError, match="config rounds must be int, got 'five'"):
        load_app(spec, config={"rounds": "five"})
    with pytest.raises(AppError, match="config fast must be bool"):
        load_app(spec, config={"fast": "maybe"})
    with pytest.raises(AppError, match="is an App, so it takes no config"):
        load_app(f"{app_dir}/my_app.py:app", config={"rounds": "5"})
    with pytest.raises(AppError, match=r"not_an_app\(\) returned a int, not an App"):
        load_app(f"{app_dir}/my_app.py:not_an_app")


def test_what_was_tried_is_named(app_dir: Path) -> None:
    cases = {
        "no_such_module:app": "no module named 'no_such_module' (looked in",
        "my_app:nothing": "has no attribute 'nothing'; apps it defines: app, small",
        "my_app:number": "number is a int, not a fedstore.app.App",
        "missing.py:app": f"file {app_dir / 'missing.py'} does not exist",
        "./:app": "is a directory",
    }
    for spec, message in cases.items():
        with pytest.raises(AppError) as err:
            load_app(spec, cwd=app_dir)
        assert message in str(err.value), spec
        assert f"app {spec!r}" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "import not_installed_dep\n",
            "needs the module 'not_installed_dep', which is not installed",
        ),
        ("def broken(:\n", "syntax error in bad.py:1"),
        ("x = 1\nraise RuntimeError('no GPU')\n", "RuntimeError: no GPU (at bad.py:2)"),
        ("import sys\nsys.exit(3)\n", "called sys.exit() (a script?"),
        (
            "from fedstore.app import App\napp = App(initial={}, train=None)\n",
            "App.initial is empty",
        ),
    ],
)
def test_a_module_that_fails_to_import(tmp_path: Path, source: str, message: str) -> None:
    path = _write(tmp_path / "bad.py", source)
    with pytest.raises(AppError) as err:
        load_app(f"{path}:app")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_the_built_in_digits_app() -> None:
    app = load_app("fedstore.demos.digits:app")
    assert app.name == "digits" and app.targets == {"accuracy": 0.9}
    assert load_app(
        "fedstore.demos.digits:make_app", config={"hidden": "0"}
    ).initial_arrays().keys() == {
        "linear.bias",
        "linear.weight",
    }
