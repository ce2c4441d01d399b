"""The lm-eval model class: its three calls against direct computations with the run's model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from qkvlab.data.source import IGNORE  # noqa: E402
from qkvlab.errors import ConfigError  # noqa: E402
from qkvlab.infer.generate import Sampling, generate  # noqa: E402
from qkvlab.infer.harness import QkvlabLM  # noqa: E402
from qkvlab.infer.load import load_trained  # noqa: E402
from qkvlab.train.evaluate import evaluate  # noqa: E402

SHARINGS = ["mha", "q_eq_k", "k_eq_v", "q_eq_k_eq_v"]
PAIRS = [("the cat sat on the", " mat."), ("a dog saw 3", " birds."), ("", "the fox"), ("the fox sat ", "on"),
         ("x" * 200, " the mat.")]


def request(kind: str, args: tuple) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def direct_loglikelihood(lm: QkvlabLM, context: str, continuation: str) -> tuple[float, bool]:
    ctx, cont = lm.encode_pair(context, continuation)
    tokens = (ctx + cont)[-(lm.max_length + 1):]
    with torch.no_grad():
        logp = F.log_softmax(lm.model(torch.tensor([tokens[:-1]])).float(), -1)[0, -len(cont):]
    target = torch.tensor(cont)
    return float(logp[torch.arange(len(cont)), target].sum()), bool((logp.argmax(-1) == target).all())


@pytest.mark.parametrize("sharing", SHARINGS)
def test_loglikelihood_is_the_continuations_log_probability(text_run, sharing):
    run_dir = text_run(f"variant={sharing}", "data.tokenizer=bpe", "data.bpe_vocab_size=300")
    trained = load_trained(run_dir)
    requests = [request("loglikelihood", p) for p in PAIRS]
    expected = [direct_loglikelihood(QkvlabLM(trained=trained), *p) for p in PAIRS]
    for batch in (1, 3):
        got = QkvlabLM(trained=trained, batch_size=batch).loglikelihood(requests)
        assert [g[1] for g in got] == [e[1] for e in expected]
        assert [g[0] for g in got] == pytest.approx([e[0] for e in expected], rel=1e-5, abs=1e-5)


def test_is_greedy_is_true_for_the_models_own_argmax(text_run):
    lm = QkvlabLM(trained=load_trained(text_run("variant=k_eq_v")))
    ctx = lm.tok_encode("the cat sat on")
    with torch.no_grad():
        for _ in range(3):
            ctx.append(int(lm.model(torch.tensor([ctx]))[0, -1].argmax()))
    greedy = lm.tok_decode(ctx[-3:])
    other = lm.tok_decode(ctx[-3:-1] + [(ctx[-1] + 1) % 256])
    got = lm.loglikelihood([request("loglikelihood", ("the cat sat on", greedy)),
                            request("loglikelihood", ("the cat sat on", other))])
    assert [g[1] for g in got] == [True, False]


def test_rolling_loglikelihood_is_qkvlab_evals_perplexity_on_the_same_windows(text_run):
    lm = QkvlabLM(trained=load_trained(text_run("variant=mha")), max_length=32, batch_size=4)
    text = "the dog sat on the mat. " * 12  # byte tokenizer: 288 tokens, nine windows of 32
    tokens = lm.tok_encode(text)
    assert len(tokens) % 32 == 0
    stream = torch.tensor([lm.eot] + tokens)
    x, y = stream[:-1].view(-1, 32), stream[1:].view(-1, 32)
    metrics = evaluate(lm.model, [(x, y)], torch.device("cpu"), torch.autocast("cpu", enabled=False), False)
    assert (y != IGNORE).sum() == len(tokens)
    got = lm.loglikelihood_rolling([request("loglikelihood_rolling", (text,))])
    assert got[0] == pytest.approx(-metrics["val/loss"] * len(tokens), rel=1e-5)
    assert math.exp(-got[0] / len(tokens)) == pytest.approx(metrics["val/ppl"], rel=1e-5)


def test_generate_until_stops_at_until_and_is_qkvlab_generates_greedy_output(text_run):
    trained = load_trained(text_run("variant=q_eq_k_eq_v"))
    lm = QkvlabLM(trained=trained, batch_size=2)
    prompts = ["the cat sat", "a fox saw"]
    full = [lm.tok_decode(generate(trained.model, torch.tensor([lm.tok_encode(p)]), Sampling(20, 0.0))[0].tolist())
            for p in prompts]
    free = lm.generate_until([request("generate_until", (p, {"until": ["\u2603"], "max_gen_toks": 20})) for p in prompts])
    assert free == full
    stop = full[0][3:5]  # a string the greedy output holds: the text must end just before it
    cut = lm.generate_until([request("generate_until", (prompts[0], {"until": [stop], "max_gen_toks": 20}))])
    assert cut == [full[0][: full[0].index(stop)]]


def test_a_misspelt_model_arg_is_one_line():
    with pytest.raises(ConfigError) as err:
        QkvlabLM.create_from_arg_string("rundir=x")
    assert str(err.value) == ("model_args: the qkvlab model has no argument 'rundir'; it takes run_dir, "
                              "max_length, max_gen_toks (and lm-eval's batch_size, device)")
