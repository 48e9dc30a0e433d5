import torch

from configs.schema import TinyModelSection, TrainSection
from tasks import tiny_model
from tasks.trainer import Sample, completion_logprobs, make_scheduler, pack, rl_update


def _model():
    tok = tiny_model.build_tokenizer()
    return tiny_model.build_model(TinyModelSection(), len(tok), seed=0)


def test_pack_aligns_predicting_positions():
    b = pack([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], 0, torch.device("cpu"))
    assert b.input_ids.tolist() == [[5, 6, 7, 9, 10], [8, 11, 12, 13, 0]]
    assert b.position_ids[1].tolist()[:4] == [0, 1, 2, 3]
    # position p predicts token p+1: prompt_len-1+j predicts completion token j
    assert list(zip(b.pred_rows.tolist(), b.pred_cols.tolist())) == [(0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]
    assert b.comp_mask.tolist() == [[True, True, False], [True, True, True]]


def test_right_padding_does_not_change_logprobs():
    model = _model().eval()
    alone = pack([[5, 6, 7]], [[9, 10]], 0, torch.device("cpu"))
    padded = pack([[5, 6, 7], [8, 8, 8, 8, 8, 8]], [[9, 10], [11, 12, 13, 14]], 0, torch.device("cpu"))
    with torch.no_grad():
        a = completion_logprobs(model, alone, 0.7, 3)[0, :2]
        b = completion_logprobs(model, padded, 0.7, 3)[0, :2]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def _update(rho):
    torch.manual_seed(0)
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainSection(lr=1e-3, mini_batch_size=4, micro_batch_size=2, prob_mask_rho=rho)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    samples = [Sample([5, 6, 7], [9, 10, 11], [], a) for a in (1.0, -1.0, 0.5, -0.5)]
    stats = rl_update(model, opt, make_scheduler(opt, cfg, 10), samples, cfg, temperature=1.0, pad_id=0,
                      device=torch.device("cpu"), seed=0)
    moved = any(not torch.equal(p, q) for p, q in zip(before, model.parameters()))
    return stats, moved


def test_probability_mask_selects_trained_tokens():
    stats, moved = _update(rho=1e-9)  # every token has p >= rho: nothing carries gradient
    assert stats["frac_tokens_trained"] == 0.0 and not moved
    stats, moved = _update(rho=1.0)  # an untrained model gives every token p < 1
    assert stats["frac_tokens_trained"] == 1.0 and moved
    stats, moved = _update(rho=None)
    assert stats["frac_tokens_trained"] == 1.0 and moved
