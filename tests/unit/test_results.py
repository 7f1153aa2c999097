"""The results store's parts: link signatures, the local folder (bound, sweep, names), S3 URLs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from v2server.errors import StoreUnavailable, V2Error
from v2server.results import LinkSigner, LocalStore, S3Store, Verdict, is_result_id, new_result_id, open_store
from v2server.results._s3 import MAX_PRESIGNED_SECONDS
from v2server.results._signing import LinkSigner as Signer
from v2server.settings import Settings


def test_ids_are_random_hex_and_only_they_are_ids() -> None:
    ids = {new_result_id() for _ in range(100)}
    assert len(ids) == 100 and all(is_result_id(i) and len(i) == 32 for i in ids)
    for text in ("", "../etc/passwd", "A" * 32, "0" * 31, "0" * 33, "g" * 32, "0" * 32 + "\n"):
        assert not is_result_id(text), text


def test_a_signature_names_one_id_until_one_moment() -> None:
    signer, now = LinkSigner("key"), 1_000_000.0
    query = dict(part.split("=") for part in signer.query("a" * 32, 60, now).split("&"))
    expires, sig = query["expires"], query["sig"]
    assert int(expires) == 1_000_060 and len(sig) == 64
    assert signer.check("a" * 32, expires, sig, now) is Verdict.VALID
    assert signer.check("a" * 32, expires, sig, now + 60) is Verdict.VALID
    assert signer.check("a" * 32, expires, sig, now + 61) is Verdict.EXPIRED
    assert signer.check("b" * 32, expires, sig, now) is Verdict.BAD_SIGNATURE  # another id
    assert signer.check("a" * 32, str(int(expires) + 1), sig, now) is Verdict.BAD_SIGNATURE  # a later expiry
    assert signer.check("a" * 32, expires, sig.upper(), now) is Verdict.BAD_SIGNATURE
    for bad_expires, bad_sig in ((None, sig), (expires, None), ("", sig), ("-1", sig), ("1e9", sig), ("9" * 13, sig),
                                 (expires, "é")):
        assert signer.check("a" * 32, bad_expires, bad_sig, now) is Verdict.BAD_SIGNATURE
    assert LinkSigner("other").check("a" * 32, expires, sig, now) is Verdict.BAD_SIGNATURE  # key isolation
    assert LinkSigner().check("a" * 32, expires, sig, now) is Verdict.BAD_SIGNATURE  # a random key per process
    assert LinkSigner("key").check("a" * 32, expires, sig, now) is Verdict.VALID  # one secret, several replicas
    assert Signer is LinkSigner


async def test_a_stored_answer_reads_back_and_is_removed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, LinkSigner("k"), ttl=60, max_bytes=1000)
    await store.start()
    try:
        link = await store.put(b'{"data":1}', "http://h:1")
        assert link.startswith("http://h:1/v1/results/")
        result_id = link.split("/v1/results/")[1].split("?")[0]
        found = await store.chunks(result_id)
        assert found is not None
        size, chunks = found
        assert size == 10 and b"".join([chunk async for chunk in chunks]) == b'{"data":1}'
        assert store.used_bytes == 10
        await store.remove(result_id)
        assert await store.chunks(result_id) is None and store.used_bytes == 0
        assert await store.chunks("../" + result_id) is None  # a name that is not an id never reaches the disk
    finally:
        await store.close()
    assert tmp_path.is_dir()  # given, so kept


async def test_the_bound_refuses_before_writing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, LinkSigner(), ttl=60, max_bytes=15)
    await store.start()
    try:
        await store.put(b"x" * 10, "http://h")
        with pytest.raises(StoreUnavailable, match="--results-max-bytes"):
            await store.put(b"y" * 6, "http://h")
        assert len(list(tmp_path.iterdir())) == 1
        await store.put(b"z" * 5, "http://h")  # exactly up to the bound
    finally:
        await store.close()


async def test_a_sweep_removes_old_answers_only_and_recounts(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, LinkSigner(), ttl=10, max_bytes=1000)
    await store.start()
    try:
        old = tmp_path / ("a" * 32)
        old.write_bytes(b"123")
        os.utime(old, (time.time() - 100, time.time() - 100))
        await store.put(b"4567", "http://h")
        (tmp_path / "README").write_text("an operator's file")
        os.utime(tmp_path / "README", (0, 0))
        assert await store.sweep() == 1
        assert not old.exists() and (tmp_path / "README").exists()
        assert store.used_bytes == 4
        assert await store.sweep(now=time.time() + 100) == 1 and store.used_bytes == 0
    finally:
        await store.close()


async def test_a_store_without_a_folder_makes_and_removes_its_own() -> None:
    store = LocalStore(None, LinkSigner(), ttl=60, max_bytes=100)
    await store.start()
    assert await store.sweep() == 0 and await store.chunks("a" * 32) is None  # no folder until an answer
    await store.put(b"1", "http://h")
    folder = store.folder
    assert folder.is_dir() and folder.stat().st_mode & 0o777 == 0o700
    await store.close()
    assert not folder.exists()


async def test_an_unusable_results_dir_stops_the_start(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(V2Error, match="--results-dir"):
        await LocalStore(blocker / "sub", LinkSigner(), ttl=60, max_bytes=100).start()


def test_s3_urls_and_limits() -> None:
    assert S3Store("s3://bucket/a/b/", LinkSigner(), 60).prefix == "a/b/"
    assert S3Store("s3://bucket", LinkSigner(), 60).prefix == ""
    for url in ("bucket/x", "s3:///x", "http://bucket/x"):
        with pytest.raises(V2Error, match="--results-url"):
            S3Store(url, LinkSigner(), 60)
    with pytest.raises(V2Error, match="7 days"):
        S3Store("s3://bucket", LinkSigner(), MAX_PRESIGNED_SECONDS + 1)


def test_the_settings_choose_the_store() -> None:
    assert isinstance(open_store(Settings()), LocalStore)
    s3 = open_store(Settings(results_url="s3://b/p", results_ttl_seconds=30))
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix, s3.ttl) == ("b", "p/", 30)
