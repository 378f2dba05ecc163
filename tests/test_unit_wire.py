"""The region wire layer's masking of service text: what reaches our errors and logs from APC."""

from __future__ import annotations

import pytest

from hsmlb.apc import wire


@pytest.mark.parametrize("text", ["card 4111111111111111 refused", "card 4111 1111 1111 1111 refused",
                                  "card 4111-1111-1111-1111 refused", "block 0412AC89ABCDEF67 refused"])
def test_service_messages_lose_pans_and_blocks_however_written(text: str) -> None:
    clean = wire.scrub(text)
    assert clean.startswith(text.split()[0]) and clean.endswith("refused")
    assert not any(run in clean for run in ("4111", "1111", "0412AC89"))


def test_service_messages_keep_small_numbers() -> None:
    assert wire.scrub("length must be between 1 and 12, got 3 of 64") == "length must be between 1 and 12, got 3 of 64"


def test_a_cut_never_splits_a_pan_below_the_mask() -> None:
    clean = wire.scrub("x" * 395 + " 4111 1111 1111 1111")
    assert "4111" not in clean and "1111" not in clean and clean.endswith("...")
