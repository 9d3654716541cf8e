"""`moelight eval` and the lm-eval adapter, checked against direct computations with the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from random_checkpoint import ROOT, TINY_MODEL, save_random_checkpoint  # noqa: E402

from moelight.cli.main import main  # noqa: E402
from moelight.eval.adapter import MoelightLM  # noqa: E402
from moelight.eval.model import load_eval_model  # noqa: E402
from moelight.eval.tasks import LOCAL_TASK_DIR  # noqa: E402
from moelight.recipe import load_recipe  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared CPU: intra-op threads only contend (one thread was 20x faster here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("eval-ckpts")
    c2r = save_random_checkpoint(ROOT / "recipes" / "c2r.yaml", d / "c2r.ckpt", TINY_MODEL)
    # The same model and data sections with the default top-k router: the same weights load into it.
    same = load_recipe(ROOT / "recipes" / "c2r.yaml", TINY_MODEL).model_dump(mode="json")
    topk_recipe = d / "topk.yaml"
    topk_recipe.write_text(yaml.safe_dump({"model": same["model"], "data": same["data"]}))
    return {"c2r": c2r, "topk_recipe": topk_recipe}


def direct_logprobs(model: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    """log p(token[t+1] | tokens[:t+1]) for one unpadded sequence."""
    with torch.no_grad():
        logits = model(torch.tensor([tokens]))[0].double()
    return F.log_softmax(logits, -1)[:-1].gather(-1, torch.tensor(tokens[1:])[:, None]).squeeze(-1)


def byte_ids(text: str) -> list[int]:
    return list(text.encode("utf-8"))


REQUESTS = [
    ("def foo(", "x):"),
    ("import", " os"),
    ("", "class Foo:"),  # empty context: scored after EOS, the document separator
    ("x" * 50, " = 1"),  # longer than the 32-token window: the context is cut on the left
    ("for i in range(10)", ":"),
]


def test_loglikelihood_equals_direct_computation(ckpts):
    loaded = load_eval_model(ckpts["c2r"], device="cpu", dtype="float32")
    lm = MoelightLM(model=loaded, batch_size=2)  # several batches, sorted, right-padded
    got = lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(REQUESTS)], True)
    eos, window = loaded.tokenizer.eos_id, loaded.recipe.data.seq_len
    for (context, continuation), (logprob, greedy) in zip(REQUESTS, got):
        ctx, cont = byte_ids(context) or [eos], byte_ids(continuation)
        seq = (ctx + cont)[-(window + 1) :]
        scores = direct_logprobs(loaded.model, seq)[-len(cont) :]
        assert logprob == pytest.approx(float(scores.sum()), abs=1e-4, rel=1e-6)
        with torch.no_grad():
            argmax = loaded.model(torch.tensor([seq[:-1]]))[0, -len(cont) :].argmax(-1)
        assert greedy == bool((argmax == torch.tensor(cont)).all())


def test_rolling_loglikelihood_sums_disjoint_windows(ckpts):
    loaded = load_eval_model(ckpts["c2r"], device="cpu", dtype="float32")
    lm = MoelightLM(model=loaded, batch_size=3)
    text = "def f(x):\n    return x * 2\n" * 4  # 112 bytes: windows of 32, 32, 32 and 16
    (got,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], True)
    full = [loaded.tokenizer.eos_id] + byte_ids(text)  # the document after its separator
    window, n, expected = loaded.recipe.data.seq_len, len(full) - 1, 0.0
    for a in range(0, n, window):  # targets full[a+1 : b+1], each block with a full window before it
        b = min(a + window, n)
        scores = direct_logprobs(loaded.model, full[max(0, b - window) : b + 1])
        expected += float(scores[-(b - a) :].sum())
    assert got == pytest.approx(expected, abs=1e-3, rel=1e-6)


def test_generate_until_is_greedy_with_stop_strings_and_budget(ckpts):
    loaded = load_eval_model(ckpts["c2r"], device="cpu", dtype="float32")
    lm = MoelightLM(model=loaded, batch_size=4)
    prompts = [
        ("def f", {"until": ["e"], "max_gen_toks": 12}),
        ("import o", {"until": ["\n"], "max_gen_toks": 5}),
    ]
    got = lm.generate_until([Instance("generate_until", {}, p, i) for i, p in enumerate(prompts)], True)
    for (context, kwargs), text in zip(prompts, got):
        tokens, new = byte_ids(context), []
        while len(new) < kwargs["max_gen_toks"]:
            with torch.no_grad():
                token = int(loaded.model(torch.tensor([(tokens + new)[-32:]]))[0, -1].argmax())
            if token == loaded.tokenizer.eos_id:
                break
            new.append(token)
            if kwargs["until"][0] in loaded.tokenizer.decode(new):
                break
        assert text == loaded.tokenizer.decode(new).split(kwargs["until"][0])[0]


def test_c2r_checkpoint_is_evaluated_with_c2r(ckpts):
    c2r = load_eval_model(ckpts["c2r"], device="cpu", dtype="float32")
    topk = load_eval_model(ckpts["c2r"], recipe=ckpts["topk_recipe"], device="cpu", dtype="float32")
    assert {type(layer.router).__name__ for layer in c2r.model.moe_layers} == {"C2RRouter"}
    assert {type(layer.router).__name__ for layer in topk.model.moe_layers} == {"TopKRouter"}
    reqs = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(REQUESTS)]
    a = [x for x, _ in MoelightLM(model=c2r).loglikelihood(reqs, True)]
    b = [x for x, _ in MoelightLM(model=topk).loglikelihood(reqs, True)]
    assert max(abs(x - y) for x, y in zip(a, b)) > 1e-3, (a, b)


def errors_of(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1, err
    return " ".join(err.split())  # rich wraps long lines at the terminal width


@pytest.mark.slow
def test_local_multiple_choice_accuracy_equals_hand_computation(ckpts, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["eval", str(ckpts["c2r"]), "--tasks", "moelight_python_mc", "--limit", "12", "--out", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    acc = results["results"]["moelight_python_mc"]["acc,none"]
    assert "moelight_python_mc" in (out / "results.md").read_text()

    loaded = load_eval_model(ckpts["c2r"], device="cpu", dtype="float32")
    items = [json.loads(line) for line in (LOCAL_TASK_DIR / "python_mc.jsonl").read_text().splitlines()]
    items = [it for it in items if it["split"] == "test"][:12]
    right = 0
    for it in items:
        scores = []
        for choice in it["choices"]:
            ctx, cont = byte_ids(it["context"]), byte_ids(choice)
            scores.append(float(direct_logprobs(loaded.model, ctx + cont)[-len(cont) :].sum()))
        right += int(max(range(len(scores)), key=scores.__getitem__) == it["answer"])
    assert acc == pytest.approx(right / len(items), abs=1e-12)


def test_two_checkpoints_side_by_side(ckpts, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["eval", str(ckpts["c2r"]), str(ckpts["c2r"]), "--labels", "a,b", "--tasks", "moelight_python_mc"]
    assert main([*argv, "--limit", "8", "--out", str(out)]) == 0
    table = (out / "results.md").read_text()
    assert "| a | b | Δ b |" in table and "average (accuracy, %)" in table
    assert (out / "a" / "results.json").is_file() and (out / "b" / "results.json").is_file()
    assert "+0.00" in table.splitlines()[2]  # the same model twice: no delta


@pytest.mark.slow
def test_bad_inputs_exit_2_with_one_message(ckpts, tmp_path, capsys):
    ckpt = str(ckpts["c2r"])
    assert "unknown task(s): no_such_task" in errors_of(capsys, "eval", ckpt, "--tasks", "no_such_task")
    assert "checkpoint not found" in errors_of(capsys, "eval", str(tmp_path / "x.ckpt"), "--tasks", "a")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    missing = tmp_path / "absent.jsonl"
    (tasks / "local_missing.yaml").write_text(
        "task: local_missing\ndataset_path: json\ndataset_kwargs:\n"
        f"  data_files:\n    test: {missing}\noutput_type: multiple_choice\ntest_split: test\n"
        "doc_to_text: q\ndoc_to_choice: choices\ndoc_to_target: answer\n"
    )
    (tasks / "hub_only.yaml").write_text(
        "task: hub_only\ndataset_path: moelight-tests/not-on-this-machine\noutput_type: multiple_choice\n"
        "test_split: test\ndoc_to_text: q\ndoc_to_choice: choices\ndoc_to_target: answer\n"
    )
    err = errors_of(capsys, "eval", ckpt, "--include-path", str(tasks), "--tasks", "local_missing")
    assert str(missing) in err
    err = errors_of(capsys, "eval", ckpt, "--include-path", str(tasks), "--tasks", "hub_only")
    assert "moelight-tests/not-on-this-machine" in err and "test" in err
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(f"extends: {ROOT / 'recipes' / 'quickstart.yaml'}\nmodel:\n  hidden_size: 64\n")
    err = errors_of(capsys, "eval", ckpt, "--recipe", str(wrong), "--tasks", "moelight_python_mc")
    assert "do not fit" in err


@pytest.mark.slow
def test_lm_eval_cli_runs_the_local_task_with_model_moelight(ckpts, tmp_path):
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "moelight.eval.lm_eval_cli",
            "--model",
            "moelight",
            "--model_args",
            f"checkpoint={ckpts['c2r']},dtype=float32",
            "--tasks",
            "moelight_python_mc",
            "--limit",
            "4",
            "--batch_size",
            "4",
            "--output_path",
            str(tmp_path / "lm-eval-out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = list((tmp_path / "lm-eval-out").rglob("results_*.json"))
    data = json.loads(result.read_text())
    assert data["results"]["moelight_python_mc"]["acc,none"] in {0.0, 0.25, 0.5, 0.75, 1.0}
    assert data["config"]["model"] == "moelight"


def test_paper_suite_and_tags_expand_to_task_rows():
    from lm_eval.tasks import TaskManager

    from moelight.eval.tasks import expand_tags, parse_tasks

    runs = parse_tasks("paper", None)
    assert len(runs) == 10
    shots = {r.name: r.num_fewshot for r in runs}
    assert shots["arc_challenge"] == 25 and shots["hellaswag"] == 10 and shots["mmlu"] == 5
    assert shots["boolq"] == 32 and shots["sciq"] == 0
    assert {r.num_fewshot for r in parse_tasks("paper", 3)} == {3}  # --num-fewshot overrides all
    manager = TaskManager(include_path=str(LOCAL_TASK_DIR), include_defaults=False)
    names = [r.name for r in expand_tags(manager, parse_tasks("moelight_local,moelight_python_mc", None))]
    assert names == ["moelight_python_complete", "moelight_python_mc", "moelight_stdlib_ppl"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_bf16_scores_follow_fp32_cpu(ckpts):
    cpu = load_eval_model(ckpts["c2r"], device="cpu", dtype="float32")
    gpu = load_eval_model(ckpts["c2r"])  # the defaults: the GPU in bf16
    assert gpu.device.type == "cuda" and gpu.dtype == torch.bfloat16
    reqs = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(REQUESTS)]
    a = torch.tensor([x for x, _ in MoelightLM(model=cpu).loglikelihood(reqs, True)])
    b = torch.tensor([x for x, _ in MoelightLM(model=gpu).loglikelihood(reqs, True)])
    # bf16 rounding can flip a near-tied routing decision, so compare per token on average only.
    n_tokens = torch.tensor([len(c.encode()) for _, c in REQUESTS], dtype=torch.float32)
    assert ((a - b).abs() / n_tokens).mean() < 0.1, (a, b)


def test_default_labels_name_what_differs():
    from moelight.cli.eval import default_labels

    runs = ["runs/topk/checkpoints/last.ckpt", "runs/c2r/checkpoints/last.ckpt"]
    assert default_labels(runs) == ["topk", "c2r"]
    assert default_labels(["a/x.ckpt", "a/y.ckpt"]) == ["x", "y"]
    assert default_labels(["a/x.ckpt", "a/x.ckpt"]) == ["0:x", "1:x"]
