"""`orch top`'s keyboard: the bytes a terminal sends in cbreak mode decoded into key names."""
from __future__ import annotations

from typing import List

# CSI (`ESC [ ... final`) and SS3 (`ESC O x`) sequences of the keys `orch top` knows;
# xterm, tmux/screen and the Linux console spell Home and End differently.
SEQUENCES = {
    "[A": "up", "[B": "down", "[C": "right", "[D": "left",
    "OA": "up", "OB": "down", "OC": "right", "OD": "left",
    "[5~": "pgup", "[6~": "pgdn",
    "[H": "home", "[F": "end", "OH": "home", "OF": "end",
    "[1~": "home", "[4~": "end", "[7~": "home", "[8~": "end",
}
SINGLE = {"\r": "enter", "\n": "enter", " ": "space", "\t": "tab", "\x7f": "backspace", "\x03": "ctrl-c"}


def decode(data: bytes) -> List[str]:
    """Key names for what one read returned: `up`, `pgdn`, `enter`, `esc`, or the character
    itself (`q`, `j`, `G`). An unknown escape sequence is dropped whole; ESC followed by
    anything that does not start a sequence is `esc` and then that key."""
    text = data.decode("utf-8", errors="replace")
    keys: List[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char != "\x1b":
            keys.append(SINGLE.get(char, char))
            index += 1
            continue
        length = _sequence_length(text, index + 1)
        if length == 0:
            keys.append("esc")
            index += 1
            continue
        name = SEQUENCES.get(text[index + 1:index + 1 + length])
        if name:
            keys.append(name)
        index += 1 + length
    return keys


def _sequence_length(text: str, start: int) -> int:
    """How many characters after an ESC at `start - 1` form its sequence (0: a lone ESC)."""
    if start >= len(text):
        return 0
    lead = text[start]
    if lead == "O":
        return 2 if start + 1 < len(text) else 0
    if lead != "[":
        return 0
    end = start + 1
    # parameter and intermediate bytes (0x20-0x3F), then one final byte (0x40-0x7E)
    while end < len(text) and "\x20" <= text[end] <= "\x3f":
        end += 1
    if end < len(text) and "\x40" <= text[end] <= "\x7e":
        return end - start + 1
    return len(text) - start  # cut short: drop what arrived of it
