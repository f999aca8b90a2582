"""Certificates a third party can trust (docs/theory.md §8): server-keyed noise that no client can shop for,
the failure-probability cap and budget, signed documents that `smoothgen verify` checks and recomputes,
the audit log, and the key files.

The seed-shopping attack is the one an independent review ran against the service: one digits test image
whose pA is about 0.61, certified again and again with client-chosen seeds at alpha = 0.1 until a radius
beyond what pA allows came out. Here the same attacker, and one who sends near-duplicates of the input
instead, gets no issued radius beyond the cap that 40 000 fresh votes put on every sound radius."""
import copy
import json
import os
import stat

import numpy as np
import pytest
import torch
from scipy.stats import beta, norm

from smoothgen.audit import AuditLog, BudgetExceededError
from smoothgen.classify import SmoothedClassifier
from smoothgen.cli import main
from smoothgen.errors import InvalidInputError, InvalidParameterError
from smoothgen.jobs import certify_record, without_timing
from smoothgen.models import load_classifier, load_digits_split
from smoothgen.service import CertificationService, ServiceConfig
from smoothgen.trust import (KeyFileError, ServerKeys, SignatureError, Signer, canonical, check_input_matches,
                             input_digest, issued_seed, verify_signature)

X = load_digits_split().x_test
SIGMA = 0.25
#: A test image whose top class has pA ≈ 0.61 at σ = 0.25: radii there are small and sensitive to luck.
SHOPPED = 38


@pytest.fixture(scope="module")
def keys():
    return ServerKeys.generate()


@pytest.fixture(scope="module")
def service(keys, tmp_path_factory):
    torch.set_num_threads(1)
    db = tmp_path_factory.mktemp("audit") / "audit.sqlite"
    svc = CertificationService(ServiceConfig(backend="eager", batch_size=500, endpoints=("certify", "predict", "center"),
                                             keys=keys, audit_db=str(db)))
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def cap():
    """The largest radius any sound certificate of X[SHOPPED] can have, with probability 1 − 1e-9: σ·Φ⁻¹ of
    the one-sided upper Clopper–Pearson bound of pA from 40 000 fresh votes (a seed no request can reach)."""
    smoothed = SmoothedClassifier(load_classifier(SIGMA), 10, SIGMA, batch_size=2000)
    cert = smoothed.certify(torch.from_numpy(X[SHOPPED]), 100, 40_000, 0.001, seed=2**62 + 12345, request_id=0)
    p_upper = beta.ppf(1 - 1e-9, cert.count + 1, 40_000 - cert.count)
    return SIGMA * norm.ppf(p_upper)


def _issued_radii(documents):
    return [d["record"]["radius"] for d in documents if d.get("issued") is True]


def test_the_review_seed_shopping_attack_yields_no_issued_radius_beyond_the_cap(service, cap):
    """The attacker of the review: alpha = 0.1 and seeds 0, 1, 2, ... keeping the best radius. The service
    no longer lets a client pick the seed or alpha of an issued certificate; the answers it does give for
    a chosen seed are reproductions, never certificates. (On the code before, seeds 0..99 issued radii up
    to beyond the cap, and every one was presented as a certificate.)"""
    x = X[SHOPPED].tolist()
    answers = []
    for seed in range(100):
        try:
            answers.append(service.call("certify", {"x": x, "n": 300, "alpha": 0.1, "seed": seed, "request_id": 0}))
        except InvalidParameterError as exc:
            assert "chosen by the server" in str(exc)
    assert answers == []
    reproductions = [service.call("certify", {"x": x, "n": 300, "alpha": 0.1, "seed": seed, "request_id": 0, "reproduce": True})
                     for seed in range(100)]
    beyond = [r for r in reproductions if r["reproduction"]["radius"] > cap]
    assert beyond, "the attack must still find lucky seeds, or this test shows nothing"
    for r in reproductions:
        assert r["issued"] is False and "record" not in r and "signature" not in r and "not an issued certificate" in r["notice"]
        with pytest.raises(SignatureError, match="not an issued certificate"):
            verify_signature(r)
    # What an issued certificate allows: no seed, alpha at most max_alpha.
    with pytest.raises(InvalidParameterError, match="at most 1e-06"):
        service.call("certify", {"x": x, "n": 500, "alpha": 0.1})
    issued = [service.call("certify", {"x": x, "n": 500}) for _ in range(5)]
    assert len({d["seed"] for d in issued}) == 1 and len({d["record"]["radius"] for d in issued}) == 1  # the repeat
    assert max(_issued_radii(issued)) <= cap


def test_near_duplicate_inputs_and_parameters_yield_no_issued_radius_beyond_the_cap(service, cap):
    """Near-duplicates draw fresh noise (a different input digest, a different key); the union bound over
    them is Q·alpha (10⁻⁶ each), and every issued radius stays below the cap (+ the input's shift)."""
    rng = np.random.default_rng(0)
    x0 = X[SHOPPED]
    documents, shifts = [], []
    for q in range(40):
        x = x0.copy()
        pixels = np.flatnonzero(x.ravel() > 0.1)
        x.reshape(-1)[rng.choice(pixels, 3, replace=False)] -= np.float32(1e-6) * (q + 1)
        shifts.append(float(np.linalg.norm(x - x0)))
        documents.append(service.call("certify", {"x": x.tolist(), "n": 2000}, client="shopper"))
    for n in range(2000, 2010):  # the same input under other sample counts: other keys too
        documents.append(service.call("certify", {"x": x0.tolist(), "n": n}, client="shopper"))
    assert len({d["seed"] for d in documents}) == len(documents)  # every one drew fresh, server-keyed noise
    radii = _issued_radii(documents)
    assert len(radii) == 50 and max(radii) <= cap + max(shifts)
    # The audit log counts them: one query per input, per client.
    assert service.audit.count(client="shopper") == 50
    assert service.audit.count(input_sha256=input_digest(x0)["sha256"], client="shopper") == 10
    assert service.audit.spent("shopper") == pytest.approx(50e-6)


def test_an_issued_certificate_is_signed_over_every_field_and_the_input(service, keys):
    x = X[3]
    document = service.call("certify", {"x": x.tolist(), "n": 1000, "label": 3})
    public = Signer(keys).public_key
    assert verify_signature(json.loads(json.dumps(document)), public) == Signer(keys).key_id
    check_input_matches(document, x)

    def leaves(value, path=()):
        if isinstance(value, dict):
            for k, v in value.items():
                yield from leaves(v, (*path, k))
        elif isinstance(value, list) and value:
            for i, v in enumerate(value):
                yield from leaves(v, (*path, i))
        else:
            yield path

    def changed(value):
        if isinstance(value, bool):
            return not value
        if isinstance(value, (int, float)):
            return value + 1
        if isinstance(value, str):
            return value + "x"
        return 0

    paths = [p for p in leaves(document) if p[0] != "signature"]
    assert len(paths) > 40
    for path in paths:
        tampered = copy.deepcopy(document)
        target = tampered
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = changed(target[path[-1]])
        with pytest.raises(SignatureError):
            verify_signature(tampered, public)
    for extra in ({"note": "ok"}, {"record": {**document["record"], "radius": 5.0}}):
        with pytest.raises(SignatureError):
            verify_signature({**document, **extra}, public)
    # One changed byte of the input (the lowest bit of one float32) is another input.
    other = x.copy()
    other.view(np.uint8).reshape(-1)[17] ^= 1
    with pytest.raises(InvalidInputError, match="digest"):
        check_input_matches(document, other)
    with pytest.raises(SignatureError, match="not by the given key"):
        verify_signature(document, Signer(ServerKeys.generate()).public_key)
    assert canonical(document) == canonical(json.loads(json.dumps(document)))


def test_the_budget_refuses_a_client_past_its_summed_failure_probability(keys):
    svc = CertificationService(ServiceConfig(backend="eager", batch_size=500, endpoints=("predict",), keys=keys,
                                             alpha_budget=3.5e-6))
    try:
        for i in range(3):
            svc.call("predict", {"x": X[i].tolist(), "n": 100}, client="alice")
        with pytest.raises(BudgetExceededError, match="alice"):
            svc.call("predict", {"x": X[3].tolist(), "n": 100}, client="alice")
        svc.call("predict", {"x": X[0].tolist(), "n": 100}, client="alice")  # a repeat: the same certificate, no new risk
        svc.call("predict", {"x": X[3].tolist(), "n": 100}, client="bob")  # budgets are per client
        svc.call("predict", {"x": X[5].tolist(), "n": 100, "alpha": 0.3, "seed": 1, "reproduce": True}, client="alice")
        assert svc.audit.count(client="alice") == 4 and svc.audit.count(client="alice", mode="reproduction") == 1
    finally:
        svc.close()


def test_the_budget_is_checked_atomically_with_the_log(tmp_path):
    log = AuditLog(tmp_path / "a.sqlite")
    entry = {"certificate_id": "c", "issued_at": "t", "client": "eve", "endpoint": "certify", "mode": "issued",
             "model_sha256": "m", "input_sha256": "i", "seed": 1, "failure_probability": 1e-6, "key_id": "k"}
    log.record(entry, "{}", budget=1.5e-6)
    log.record(entry, "{}", budget=1.5e-6)  # the same seed again: allowed
    with pytest.raises(BudgetExceededError):
        log.record({**entry, "seed": 2}, "{}", budget=1.5e-6)
    assert log.count(client="eve") == 2 and log.spent("eve") == pytest.approx(1e-6)
    assert stat.S_IMODE(os.stat(tmp_path / "a.sqlite").st_mode) == 0o600


def test_replicas_with_the_same_keys_issue_the_same_certificate(keys):
    """Every replica gets the server's keys, so which replica answers does not change the certificate; a
    server with other keys draws other noise."""
    configs = [ServiceConfig(backend="eager", batch_size=500, endpoints=("predict",), keys=k)
               for k in (keys, keys, ServerKeys.generate())]
    services = [CertificationService(c, replica=f"r{i}") for i, c in enumerate(configs)]
    try:
        answers = [s.call("predict", {"x": X[7].tolist(), "n": 300}) for s in services]
    finally:
        for s in services:
            s.close()
    assert answers[0]["seed"] == answers[1]["seed"] != answers[2]["seed"]
    assert without_timing(answers[0]["record"]) == {**without_timing(answers[1]["record"])}
    assert answers[0]["signature"]["key_id"] == answers[1]["signature"]["key_id"] != answers[2]["signature"]["key_id"]


def test_issued_seeds_depend_on_every_part_of_the_key():
    key = b"k" * 32
    base = issued_seed(key, "m", "i", "certify", {"n": 1})
    assert 0 <= base < 2**63
    others = {issued_seed(b"K" * 32, "m", "i", "certify", {"n": 1}), issued_seed(key, "m2", "i", "certify", {"n": 1}),
              issued_seed(key, "m", "i2", "certify", {"n": 1}), issued_seed(key, "m", "i", "predict", {"n": 1}),
              issued_seed(key, "m", "i", "certify", {"n": 2})}
    assert base not in others and len(others) == 5


def test_key_files_are_created_private_and_refused_when_others_can_read_them(tmp_path):
    keys = ServerKeys.load_or_create(tmp_path / "state")
    for name in ("seed.key", "signing.key"):
        assert stat.S_IMODE(os.stat(tmp_path / "state" / name).st_mode) == 0o600
    again = ServerKeys.load_or_create(tmp_path / "state")
    assert again.seed_key == keys.seed_key and again.public_key_b64() == keys.public_key_b64()
    assert "seed_key" not in repr(keys) and keys.seed_key.hex() not in repr(keys)
    os.chmod(tmp_path / "state" / "signing.key", 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        ServerKeys.load_or_create(tmp_path / "state")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "seed.key").write_text("not hex")
    os.chmod(tmp_path / "bad" / "seed.key", 0o600)
    with pytest.raises(KeyFileError, match="not a hex key"):
        ServerKeys.load_or_create(tmp_path / "bad")


def test_reproduction_can_be_switched_off(keys):
    svc = CertificationService(ServiceConfig(backend="eager", endpoints=("predict",), keys=keys, allow_reproduction=False))
    try:
        with pytest.raises(InvalidParameterError, match="issues certificates only"):
            svc.call("predict", {"x": X[0].tolist(), "n": 100, "seed": 1, "reproduce": True})
    finally:
        svc.close()


# ------------------------------------------------------------------------------------------ smoothgen verify
def _save(tmp_path, name, document):
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return str(path)


@pytest.mark.parametrize("endpoint,body", [
    ("certify", {"n": 1500, "label": 2}),
    ("certify", {"target_radius": 0.25}),
    ("predict", {"n": 400}),
    ("center", {"n": 10_000, "m": 4000, "metric": "l2", "eps_in": 0.2}),
])
def test_verify_accepts_issued_documents_and_recomputes_them_bit_for_bit(service, keys, tmp_path, capsys, endpoint, body):
    x = X[11]
    document = service.call(endpoint, {"x": x.tolist(), **body})
    path = _save(tmp_path, "doc.json", document)
    np.save(tmp_path / "x.npy", x)
    key = Signer(keys).public_key
    assert main(["verify", path, "--public-key", key, "--input", str(tmp_path / "x.npy"), "--recompute",
                 "--batch-size", "700"]) == 0
    out = capsys.readouterr().out
    assert "signature: valid" in out and f"recomputed {endpoint} record: identical" in out and "verified:" in out
    # A lying server: a better radius, signed with its own key, passes the signature but not the recomputation.
    if endpoint == "certify" and "n" in body:
        forged = Signer(keys).sign({**{k: v for k, v in document.items() if k != "signature"},
                                    "record": {**document["record"], "count": document["record"]["count"] + 7}})
        assert main(["verify", _save(tmp_path, "forged.json", forged), "--input", str(tmp_path / "x.npy"), "--recompute"]) == 1
        assert "differs from the signed one in: count" in capsys.readouterr().err
    # One changed input byte, one changed field.
    other = x.copy()
    other.view(np.uint8).reshape(-1)[0] ^= 1
    np.save(tmp_path / "other.npy", other)
    assert main(["verify", path, "--input", str(tmp_path / "other.npy")]) == 1
    assert "not the certified input" in capsys.readouterr().err
    tampered = {**document, "params": {**document["params"], "n0" if endpoint == "certify" else "n": 1}}
    assert main(["verify", _save(tmp_path, "bad.json", tampered), "--public-key", key]) == 1
    assert "changed after signing" in capsys.readouterr().err


@pytest.mark.parametrize("n0", [30, 0])  # 0: the model's own greedy decoding chose the tokens
def test_verify_recomputes_a_generation(keys, tmp_path, capsys, n0):
    svc = CertificationService(ServiceConfig(backend="eager", endpoints=("generate",), keys=keys))
    try:
        document = svc.call("generate", {"prompt": "import os\nimport s", "max_new_tokens": 3, "n0": n0, "n": 200})
    finally:
        svc.close()
    assert document["issued"] is True and document["input"]["dtype"] == "utf-8"
    path = _save(tmp_path, "gen.json", document)
    (tmp_path / "prompt.txt").write_text("import os\nimport s")
    assert main(["verify", path, "--input", str(tmp_path / "prompt.txt"), "--recompute"]) == 0
    assert "recomputed generate record: identical" in capsys.readouterr().out
    (tmp_path / "other.txt").write_text("import os\nimport t")
    assert main(["verify", path, "--input", str(tmp_path / "other.txt")]) == 1


def test_verify_recomputes_a_document_signed_before_its_record_gained_fields(keys, tmp_path, capsys):
    """A generate record signed by the previous release lacks the fields added since (delete_prob,
    sequential, max_samples, check_every): every field it does claim is still recomputed and compared."""
    svc = CertificationService(ServiceConfig(backend="eager", endpoints=("generate",), keys=keys))
    try:
        document = svc.call("generate", {"prompt": "import os\nimport s", "max_new_tokens": 3, "n0": 30, "n": 200})
    finally:
        svc.close()
    for name in ("delete_prob", "sequential", "max_samples", "check_every"):
        del document["record"][name]
    document = Signer(keys).sign(document)  # as the previous release signed it
    (tmp_path / "prompt.txt").write_text("import os\nimport s")
    assert main(["verify", _save(tmp_path, "old.json", document), "--input", str(tmp_path / "prompt.txt"), "--recompute"]) == 0
    assert "recomputed generate record: identical" in capsys.readouterr().out
    document["record"]["tokens"] = [0, 0, 0]  # a claimed field that differs still fails
    document = Signer(keys).sign(document)
    assert main(["verify", _save(tmp_path, "wrong.json", document), "--input", str(tmp_path / "prompt.txt"), "--recompute"]) == 1
    assert "differs from the signed one in: tokens" in capsys.readouterr().err


def test_verify_recomputes_a_sequential_deletion_generation(keys, tmp_path, capsys):
    """Token deletion with sequential estimation: the document names both, and a third party recomputes
    the same record from them (the embedded deletion-trained LM, the copies drawn until the stop)."""
    svc = CertificationService(ServiceConfig(backend="eager", endpoints=("generate",), keys=keys))
    try:
        document = svc.call("generate", {"prompt": "import os\nimport s", "max_new_tokens": 3, "n0": 30, "n": 400,
                                         "noise": "delete", "sequential": True, "check_every": 40})
    finally:
        svc.close()
    record = document["record"]
    assert record["noise"] == "deletion" and record["sequential"] and record["n"] <= 400
    assert document["model"]["name"] == "embedded:code_lm_delete0.9" and document["params"]["delete_prob"] == 0.9
    path = _save(tmp_path, "gen.json", document)
    (tmp_path / "prompt.txt").write_text("import os\nimport s")
    assert main(["verify", path, "--input", str(tmp_path / "prompt.txt"), "--recompute"]) == 0
    assert "recomputed generate record: identical" in capsys.readouterr().out


def test_verify_recomputes_a_deletion_generation_signed_before_equal_length_selection(keys, tmp_path, capsys):
    """Documents signed before token deletion's selection copies kept the mean number of tokens have no
    params.selection: their copies were independent deletions, and verify --recompute draws them that way."""
    from smoothgen.jobs import served_generate
    from smoothgen.text_generation import load_lm_spec

    body = {"prompt": "for i in range(10):\n    print(", "max_new_tokens": 3, "n0": 30, "n": 200, "noise": "delete"}
    svc = CertificationService(ServiceConfig(backend="eager", endpoints=("generate",), keys=keys))
    try:
        document = svc.call("generate", body)
    finally:
        svc.close()
    assert document["params"]["selection"] == "equal-length" == document["record"]["selection"]
    params = {k: v for k, v in document["params"].items() if k != "selection"}
    lm, tokenizer, name = load_lm_spec(document["model"]["name"], "cpu", "delete")
    # The previous release's record, at a seed where the two draws give different records (the server's
    # seed depends on its random keys: at some seeds both draws vote the same, and the check would be moot).
    seed, request_id = 5, 0
    old = served_generate(lm, tokenizer, name, body["prompt"], params, seed=seed, request_id=request_id, batch_size=250)
    new = served_generate(lm, tokenizer, name, body["prompt"], document["params"], seed=seed, request_id=request_id,
                          batch_size=250)
    assert old["selection"] == "noise" and new["selection"] == "equal-length"
    old = {k: v for k, v in old.items() if k not in ("selection", "seconds")}  # as the previous release recorded it
    assert old["tokens"] != new["tokens"] or old["p_selection"] != new["p_selection"]  # the check can tell them apart
    document = Signer(keys).sign({**document, "seed": seed, "request_id": request_id, "params": params,
                                  "record": {**old, "seconds": new["seconds"]}})
    (tmp_path / "prompt.txt").write_text(body["prompt"])
    assert main(["verify", _save(tmp_path, "old.json", document), "--input", str(tmp_path / "prompt.txt"), "--recompute"]) == 0
    assert "recomputed generate record: identical" in capsys.readouterr().out
    # The same record claimed under equal-length selection does not recompute.
    claimed = Signer(keys).sign({**document, "params": {**params, "selection": "equal-length"}})
    assert main(["verify", _save(tmp_path, "claimed.json", claimed), "--input", str(tmp_path / "prompt.txt"), "--recompute"]) == 1


def test_verify_usage_errors_are_one_line_exit_2(tmp_path, capsys, service):
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text("{")
    document = service.call("predict", {"x": X[0].tolist(), "n": 100})
    path = _save(tmp_path, "doc.json", document)
    for args, message in ((["verify", str(tmp_path / "list.json")], "not a certificate document"),
                          (["verify", str(tmp_path / "broken.json")], "is not JSON"),
                          (["verify", str(tmp_path / "missing.json")], "cannot read"),
                          (["verify", path, "--recompute"], "needs the certified input"),
                          (["verify", path, "--input", str(tmp_path / "list.json")], "is not a NumPy .npy file")):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_the_recorded_seed_reproduces_the_issued_record(service):
    """The seed a document names is the one its record was computed with (what verify relies on)."""
    document = service.call("certify", {"x": X[9].tolist(), "n": 800})
    smoothed = SmoothedClassifier(load_classifier(SIGMA), 10, SIGMA, batch_size=500)
    expected = without_timing(certify_record(smoothed, X[9], 0, None, n0=100, n=800, alpha=1e-6, seed=document["seed"]))
    assert {k: document["record"][k] for k in expected} == expected
