from __future__ import annotations

import re

import numpy as np
import pytest

from qsim.config import AcceleratorConfig
from qsim.errors import ConfigError, ProgramError
from qsim.program import (
    CommandLayout, Halt, MatrixLayout, Matmul, Program, commands_from_words,
)

SMALL = AcceleratorConfig(rows=4, cols=4, act_mem_words=64, weight_mem_words=32,
                          acc_mem_words=16, cmd_mem_words=8)


def test_command_layout_fields_for_default_config():
    layout = CommandLayout(AcceleratorConfig())
    assert {k: (f.offset, f.width) for k, f in layout.fields.items()} == {
        "opcode": (0, 4), "accumulate": (4, 1), "act_unsigned": (5, 1), "rows": (6, 15),
        "act_addr": (21, 14), "weight_addr": (35, 14), "acc_addr": (49, 14), "inner": (63, 15),
        "step": (78, 14), "stride": (92, 14)}
    assert (layout.used_bits, layout.width) == (106, 128)


def test_encode_decode_round_trip():
    layout = CommandLayout(SMALL)
    cmd = Matmul(act_addr=63, weight_addr=28, acc_addr=15, rows=1, accumulate=True)
    word = layout.encode(cmd)
    # act_unsigned = 0 (bit 5), inner = 0 (bits 28-34), step = 1 (bits 35-40), stride = 0
    assert word == 1 | 1 << 4 | 1 << 6 | 63 << 13 | 28 << 19 | 15 << 24 | 1 << 35
    assert layout.decode(word) == cmd
    assert layout.encode(Halt()) == 0 and layout.decode(0) == Halt()
    assert commands_from_words(SMALL, [word, 0, word]) == [cmd, Halt()]


def test_encode_and_decode_errors():
    layout = CommandLayout(SMALL)
    with pytest.raises(ProgramError, match="command field act_addr = 64 does not fit its 6-bit field"):
        layout.encode(Matmul(64, 0, 0, 1))
    with pytest.raises(ProgramError, match=r"unknown opcode 7 in command word 0x7"):
        layout.decode(7)


@pytest.mark.parametrize("commands, message", [
    ((), "a program must end with a Halt command"),
    ((Matmul(0, 0, 0, 1),), "a program must end with a Halt command"),
    ((Halt(), Halt()), "Halt may only appear as the last command"),
    ((Matmul(0, 0, 0, 0), Halt()), "command 0: rows must be at least 1, not 0"),
    ((Matmul(-1, 0, 0, 1), Halt()), "command 0: act_addr must not be negative, not -1"),
    ((Matmul(60, 0, 0, 5), Halt()),
     "command 0 uses act words 60..64 but the act memory has 64 words (1 too many)"),
    ((Matmul(0, 30, 0, 1), Halt()),
     "command 0 uses weight words 30..33 but the weight memory has 32 words (2 too many)"),
    ((Matmul(0, 0, 10, 8), Halt()),
     "command 0 uses acc words 10..17 but the acc memory has 16 words (2 too many)"),
    ((Matmul(0, 0, 0, 1),) * 8 + (Halt(),),
     "the program has 9 commands but the command memory holds 8 (1 too many)"),
])
def test_program_validation(commands, message):
    with pytest.raises(ProgramError) as exc:
        Program(SMALL, commands)
    assert str(exc.value) == message


def test_program_rejects_inputs_that_overflow_or_do_not_fit():
    lay = MatrixLayout("act", 0, rows=2, cols=4, lanes=4, tile_stride=2)
    with pytest.raises(ProgramError, match=r"input 'A': A\[1, 2\] = 128 is 1 above the int8 maximum 127"):
        Program(SMALL, (Halt(),), inputs={"A": (lay, np.array([[0, 0, 0, 0], [0, 0, 128, 0]]))})
    far = MatrixLayout("act", 60, rows=8, cols=4, lanes=4, tile_stride=8)
    with pytest.raises(ProgramError, match="input 'A' needs act words 60..67 but the act memory "
                                           r"has 64 words \(4 too many\)"):
        Program(SMALL, (Halt(),), inputs={"A": (far, np.zeros((8, 4), dtype=np.int64))})


def test_matrix_layout_pack_unpack(rng):
    lay = MatrixLayout("acc", 3, rows=5, cols=10, lanes=4, tile_stride=7)
    assert (lay.lane_tiles, lay.words, lay.end) == (3, 19, 22)
    m = rng.integers(-1000, 1000, (5, 10))
    image = lay.pack(m)
    assert image.shape == (19, 4)
    # element (i, j) sits in word (j // 4) * 7 + i, lane j % 4; padding is zero
    assert image[1 * 7 + 2, 1] == m[2, 5]
    assert np.all(image[2 * 7:, 2:] == 0) and np.all(image[5:7] == 0)
    memory = np.zeros((30, 4), dtype=np.int64)
    memory[3:22] = image
    assert np.array_equal(lay.unpack(memory), m)
    with pytest.raises(ProgramError, match=r"matrix of shape \(5, 9\) does not match layout 5x10"):
        lay.pack(m[:, :9])


def test_footprint_and_initial_images():
    lay = MatrixLayout("act", 2, rows=3, cols=4, lanes=4, tile_stride=3)
    p = Program(SMALL, (Matmul(1, 4, 2, 3), Halt()), inputs={"A": (lay, np.ones((3, 4), dtype=np.int64))})
    assert p.footprint() == {"act": 5, "weight": 8, "acc": 5, "cmd": 2}
    images = p.initial_images()
    assert images["act"].tolist() == [[0] * 4] * 2 + [[1] * 4] * 3
    assert images["weight"].shape == (8, 4) and not images["weight"].any()


# ---- REQUANT commands and the post-processing parameters ----------------------------------

def _ppu_cfg(mode="fixed-point"):
    return AcceleratorConfig(rows=4, cols=6, requant=mode, act_mem_words=32, weight_mem_words=32,
                             acc_mem_words=32, cmd_mem_words=16, param_mem_words=2)


def test_requant_round_trips_through_its_command_word():
    from qsim.program import Requant

    layout = CommandLayout(_ppu_cfg())
    cmd = Requant(acc_addr=3, act_addr=7, rows=5, param_addr=1, lanes=2, src_lane=4, dst_lane=1)
    assert layout.decode(layout.encode(cmd)) == cmd
    assert "param_addr" not in CommandLayout(AcceleratorConfig()).fields


def test_requant_needs_a_post_processing_unit():
    from qsim.program import Requant

    with pytest.raises(ProgramError, match=r"^command 0 is a Requant but the configuration has "
                       r"no post-processing unit \(requant none\)$"):
        Program(AcceleratorConfig(), (Requant(0, 0, 1, 0, lanes=1), Halt()))


@pytest.mark.parametrize("kwargs, message", [
    (dict(lanes=3, src_lane=4), "command 0: src_lane 4 + lanes 3 exceeds the 6 lanes of an accumulator word"),
    (dict(lanes=2, dst_lane=3), "command 0: dst_lane 3 + lanes 2 exceeds the 4 lanes of an activation word"),
    (dict(lanes=0), "command 0: lanes must be at least 1, not 0"),
    (dict(lanes=1, param_addr=2), "command 0 uses bias words 2..2 but the bias memory has 2 words (1 too many)"),
])
def test_requant_fields_are_checked(kwargs, message):
    from qsim.program import Requant

    fields = dict(acc_addr=0, act_addr=0, rows=1, param_addr=0)
    fields.update(kwargs)
    with pytest.raises(ProgramError, match="^" + re.escape(message) + "$"):
        Program(_ppu_cfg(), (Requant(**fields), Halt()))


def test_parameter_values_are_checked():
    from qsim.program import pack_qctl

    lay = MatrixLayout("qctl", 0, 1, 6, 6, 1)
    bad = pack_qctl(0, 0, np.array([[0, 0, 0, -1, 0, 0]]), np.array([[9, 9, 9, 200, 9, 9]]))
    with pytest.raises(ProgramError, match=re.escape(
            "input 'Q': clamp bounds Q[0, 3] = [-1, 200] must satisfy lo <= hi and lie in the "
            "int8 range [-128, 127] or the uint8 range [0, 255]")):
        Program(_ppu_cfg(), (Halt(),), inputs={"Q": (lay, bad)})
    inf = np.full((1, 6), np.float32(1.0)).view(np.int32).astype(np.int64)
    inf[0, 2] = np.array([np.inf], np.float32).view(np.int32)[0]
    with pytest.raises(ProgramError, match=re.escape(
            "input 'S': float32 scale S[0, 2] = np.float32(inf) is not a finite non-negative float32")):
        Program(_ppu_cfg("float32"), (Halt(),), inputs={"S": (MatrixLayout("scale", 0, 1, 6, 6, 1), inf)})
    with pytest.raises(ProgramError, match=r"^qctl shift must be between 0 and 62, not 63$"):
        pack_qctl(63, 0, 0, 1)
    with pytest.raises(ProgramError, match=re.escape(
            "input 'S' is placed in the scale memory, which the configuration does not have "
            "(requant none)")):
        Program(AcceleratorConfig(), (Halt(),), inputs={"S": (MatrixLayout("scale", 0, 1, 8, 8, 1), inf[:, :1].repeat(8, 1))})


def test_requant_config_needs_int32_accumulators():
    with pytest.raises(ConfigError, match=r"^acc_bits must be at most 32 with requant float32 "
                       r"\(the post-processing unit takes int32 accumulators\), not 40$"):
        AcceleratorConfig(acc_bits=40, requant="float32")
    with pytest.raises(ConfigError, match=r"^requant must be one of none, fixed-point, float32, not 'int8'$"):
        AcceleratorConfig(requant="int8")
