"""What the front doors that start Ray share (smoothgen.ray_util), and the API-key files of smoothgen serve."""
import os
import stat

import pytest

from smoothgen.errors import InvalidParameterError
from smoothgen.ray_util import secure_auth_token
from smoothgen.serve import hash_token
from smoothgen.serve_cli import is_loopback, read_api_keys
from smoothgen.trust import KeyFileError


def test_rays_token_file_is_created_private_or_made_private(tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="the serve extra is installed by make test")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    path = secure_auth_token()
    assert path == tmp_path / ".ray" / "auth_token" and len(path.read_text()) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text()
    os.chmod(path, 0o644)  # as Ray 2.60 writes it with a usual umask
    assert secure_auth_token() == path and stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == token
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert secure_auth_token() is None


def test_api_key_files(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# clients\nalice aaaaaaaaaaaaaaaaaaaa\n\nbob   bbbbbbbbbbbbbbbbbbbbbbbb\n")
    os.chmod(keys, 0o600)
    assert read_api_keys(str(keys)) == {hash_token("a" * 20): "alice", hash_token("b" * 24): "bob"}
    os.chmod(keys, 0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_api_keys(str(keys))
    for text, message in (("alice short\n", "shorter than 16"), ("alice aaaaaaaaaaaaaaaaaaaa\nalice cccccccccccccccccccc\n", "twice"),
                          ("bad name aaaaaaaaaaaaaaaaaaaa\n", "expected 'NAME KEY'"), ("# nothing\n", "holds no key")):
        keys.write_text(text)
        os.chmod(keys, 0o600)
        with pytest.raises(InvalidParameterError, match=message):
            read_api_keys(str(keys))


def test_loopback_hosts():
    assert all(map(is_loopback, ("127.0.0.1", "localhost", "::1", "127.0.0.2")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "10.0.0.1", "example.org")))


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop(signum)


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_the_ray_driver_holds_a_signal_until_its_check_then_runs_the_previous_handler(signum):
    """`smoothgen certify --ray` never lets a signal handler raise inside a Ray call (Ray turns that into a
    plain KeyboardInterrupt, so SIGTERM exited 130, and its core worker could abort at shutdown): the signal
    is recorded, and check() runs the handler that was there before, once, with the handlers put back."""
    import signal

    from smoothgen.distributed import _HeldSignals

    signum = getattr(signal, signum)
    before = {s: signal.getsignal(s) for s in _HeldSignals.SIGNALS}
    signal.signal(signum, _raise_stop)
    try:
        with pytest.raises(_Stop) as raised:
            with _HeldSignals() as held:
                held.check()  # nothing received: nothing happens
                os.kill(os.getpid(), signum)
                os.kill(os.getpid(), signal.SIGINT if signum == signal.SIGTERM else signal.SIGTERM)  # second: dropped
                assert held.received == signum  # recorded, not raised
                assert signal.getsignal(signum) == held._record
                held.check()
        assert raised.value.args == (signum,)
        assert signal.getsignal(signum) is _raise_stop  # put back
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_a_signal_after_the_last_check_is_delivered_on_exit_and_ctrl_c_is_keyboard_interrupt():
    import signal

    from smoothgen.distributed import _HeldSignals

    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with _HeldSignals():
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
