"""Board flow pieces that need no simulator: the wire protocol's framing, nextpnr report parsing,
tool lookup errors and openFPGALoader's outcomes."""

from __future__ import annotations

import random
import sys

import pytest

from tessera import hostlink as hl
from tessera.config import Config
from tessera.errors import HwError
from tessera.hw.boards import bitstream, program
from tessera.hw.boards.board import get_board

PNR_LOG = """\
Info: Device utilisation:
Info: 	          TRELLIS_IO:      54/    365    14%
Info: 	                DCCA:       2/     56     3%
Info: 	              DP16KD:     122/    208    58%
Info: 	          MULT18X18D:      91/    156    58%
Info: 	          TRELLIS_FF:    6512/  83640     7%
Info: Max frequency for clock '$glbnet$crg_clkout': 24.10 MHz (FAIL at 25.00 MHz)
Info: Routing..
Info: Max frequency for clock '$glbnet$crg_clkout': 28.75 MHz (PASS at 25.00 MHz)
"""


def test_slip_and_crc_roundtrip():
    rng = random.Random(0)
    for _ in range(200):
        payload = bytes(rng.choice((0xC0, 0xDB, 0xDC, 0xDD, rng.randrange(256)))
                        for _ in range(rng.randrange(0, 40)))
        body = hl.request_body(hl.Cmd.WRITE_MEM, rng.randrange(256), 4, len(payload), payload)
        frame = hl.slip_encode(body)
        assert frame[0] == frame[-1] == hl.END and hl.END not in frame[1:-1]
        assert hl.slip_decode(frame[1:-1]) == body
        assert hl.crc32(body) == hl.CRC_RESIDUE
        assert hl.parse_request(body)[4] == payload
    with pytest.raises(hl.FrameError, match="escape"):
        hl.slip_decode(b"\x01\xdb\x02")
    bad = bytearray(hl.response_body(0, 1, b"abcd"))
    bad[3] ^= 4
    with pytest.raises(hl.FrameError, match="CRC"):
        hl.parse_response(bytes(bad))


def test_config_hash_ignores_only_the_clock():
    a = Config.preset("ulx3s")
    b = Config.from_dict({**a.to_dict(), "clock_mhz": 77.0})
    assert hl.config_hash(a) == hl.config_hash(b)
    assert hl.config_hash(a) != hl.config_hash(Config.preset("tiny"))


def test_nextpnr_reports_are_parsed():
    clocks = bitstream.parse_timing(PNR_LOG)
    assert clocks == {"$glbnet$crg_clkout": {"fmax_mhz": 28.75, "target_mhz": 25.0,
                                             "pass": True}}
    util = bitstream.parse_utilisation(PNR_LOG)
    assert util["DP16KD"] == (122, 208) and util["TRELLIS_FF"] == (6512, 83640)


def test_missing_tool_is_named_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setenv("NEXTPNR_ECP5", str(tmp_path / "no-such-nextpnr"))
    with pytest.raises(HwError, match="NEXTPNR_ECP5.*nextpnr-ecp5"):
        bitstream.build_bitstream(Config.preset("ulx3s"), "ulx3s", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bitstream_rejects_a_config_with_another_clock(tmp_path):
    cfg = Config.from_dict({**Config.preset("ulx3s").to_dict(), "clock_mhz": 100.0})
    with pytest.raises(HwError, match="clock_mhz"):
        bitstream.build_bitstream(cfg, "ulx3s", tmp_path)


def _fake_loader(tmp_path, monkeypatch, stderr: str, rc: int):
    script = tmp_path / f"loader{rc}"
    script.write_text(f"#!{sys.executable}\nimport sys\nprint({stderr!r}, file=sys.stderr)\n"
                      f"sys.exit({rc})\n")
    script.chmod(0o755)
    monkeypatch.setenv("OPENFPGALOADER", str(script))


def test_program_reports_no_board(tmp_path, monkeypatch):
    bit = tmp_path / "tessera_ulx3s.bit"
    bit.write_bytes(b"\xff" * 16)
    # What openFPGALoader 0.x prints with no board attached.
    _fake_loader(tmp_path, monkeypatch, "unable to open ftdi device: -3 (device not found)\n"
                 "JTAG init failed with: unable to open ftdi device", 1)
    with pytest.raises(HwError, match="no ulx3s found"):
        program.program("ulx3s", tmp_path)
    _fake_loader(tmp_path, monkeypatch, "done", 0)
    assert "done" in program.program("ulx3s", bit)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HwError, match="has no tessera_ulx3s.bit"):
        program.program("ulx3s", empty)
    with pytest.raises(HwError, match="does not exist"):
        program.program("ulx3s", tmp_path / "nothing.bit")


def test_program_without_loader(monkeypatch, tmp_path):
    def missing(name):
        raise HwError(f"cannot find {name}")

    monkeypatch.setattr(program, "find_tool", missing)
    (tmp_path / "tessera_ulx3s.bit").write_bytes(b"\xff")
    with pytest.raises(HwError, match="apt install openfpgaloader"):
        program.program("ulx3s", tmp_path)


def test_unknown_board():
    with pytest.raises(HwError, match="known boards: ulx3s"):
        get_board("de10")


def test_board_device_needs_a_port(monkeypatch):
    from tessera.driver import open_device
    from tessera.errors import DeviceError

    monkeypatch.delenv("TESSERA_BOARD_PORT", raising=False)
    with pytest.raises(DeviceError, match="TESSERA_BOARD_PORT"):
        open_device("board", "ulx3s")
    with pytest.raises(DeviceError, match="cannot open '/dev/no-such-tty'.*plugged in"):
        open_device("board", "ulx3s", port="/dev/no-such-tty")
