"""Where the target's routed experts live: a host arena, a device cache of fixed slots, and the copies.

- Host arena [L, E, 3 F D] bf16 bits, pinned: each expert contiguous (gate | up | down), so one expert
  is one copy. If pinning fails it is pageable and copies go through two pinned staging buffers; the store
  says so in the log and in `stats()["pinned"]`.
- Device arena [S, 3 F D]: S fixed slots, one expert each.
- Slot table [L, E] int32 on the device (-1: not resident), edited on the copy stream in order with the
  copies (the old owner cleared before its slot is overwritten, the new one set after the copy lands),
  so a kernel that waited for a slot's event also sees its table entry. A host mirror answers
  the policy's questions without device reads.
- One copy stream; one CUDA event per slot, recorded when its copy lands. The compute stream waits on
  those events (`wait_ready`, `fetch_now`), never on the host. Before a slot is overwritten the copy
  stream waits for the last compute that read it (`mark_used` records that event).

Which expert goes to which slot is the policy's decision (moespeq.policy); the store only carries it out.
On the NumPy backend copies are immediate and events are no-ops, so the same code runs on a CPU.

Usage:
    store = ExpertStore(geometry, layers=32, slots=64, backend=get_backend())
    store.host_expert(l, e)[:] = bits                 # fill the host arena
    store.prefetch(l, e, slot); ...; store.wait_ready(l, [e]); moe_bf16(..., store.slot_arena(), l); store.mark_used(l)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from moespeq.runtime.backend import Backend
from moespeq.runtime.layout import ExpertGeometry, SlotArena

log = logging.getLogger(__name__)

_STAGING_BUFFERS = 2  # pageable fallback: the CPU fills one while the DMA reads the other


def _pinned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    import cupy

    count = int(np.prod(shape))
    mem = cupy.cuda.alloc_pinned_memory(count * np.dtype(dtype).itemsize)
    return np.frombuffer(mem, dtype=dtype, count=count).reshape(shape)


class ExpertStore:
    """Host arena, device slots, device slot table and the copies between them (see module docstring)."""

    def __init__(self, geometry: ExpertGeometry, layers: int, slots: int, backend: Backend, pin: bool = True,
                 compute_stream: Any = None):
        if layers < 1 or slots < 1:
            raise ValueError(f"ExpertStore needs at least one layer and one slot, got layers={layers}, slots={slots}")
        self.geometry, self.layers, self.slots, self.backend = geometry, layers, slots, backend
        xp, elems = backend.xp, geometry.expert_elems
        self.host, self.pinned = self._host_arena((layers, geometry.experts, elems), pin)
        self.arena = xp.empty((slots, elems), dtype=xp.uint16)  # [S, 3FD]
        self.slot_table = xp.full((layers, geometry.experts), -1, dtype=xp.int32)  # [L, E] on the device
        self._table = np.full((layers, geometry.experts), -1, dtype=np.int32)  # host mirror
        self._owner: list[tuple[int, int] | None] = [None] * slots
        self._counts = {"copies": 0, "bytes": 0, "prefetches": 0, "fetch_now": 0, "evictions": 0}
        self._staging: list[np.ndarray] = []
        if backend.is_gpu:
            import cupy

            self.compute_stream = compute_stream or cupy.cuda.get_current_stream()
            self.copy_stream = cupy.cuda.Stream(non_blocking=True)
            self._landed = [cupy.cuda.Event(disable_timing=True) for _ in range(slots)]
            self._last_use: list[Any] = [None] * slots
            self._table_values = _pinned_empty((slots + 1,), np.int32)  # never modified after this line
            self._table_values[:] = np.arange(-1, slots, dtype=np.int32)
            if not self.pinned:
                self._staging = [_pinned_empty((elems,), np.uint16) for _ in range(_STAGING_BUFFERS)]
                self._staging_free = [cupy.cuda.Event(disable_timing=True) for _ in range(_STAGING_BUFFERS)]
                self._next_staging = 0

    # ---- host side ----------------------------------------------------------------------------------------
    def _host_arena(self, shape: tuple[int, ...], pin: bool) -> tuple[np.ndarray, bool]:
        if self.backend.is_gpu and pin:
            import cupy

            try:
                return _pinned_empty(shape, np.uint16), True
            except (cupy.cuda.runtime.CUDARuntimeError, cupy.cuda.memory.OutOfMemoryError, MemoryError) as exc:
                log.warning("could not pin %.1f GB of host memory (%s): experts will be copied from pageable "
                            "memory through pinned staging buffers, at lower bandwidth", np.prod(shape) * 2e-9, exc)
        elif self.backend.is_gpu:
            log.warning("host expert arena not pinned (pin=False): copies go through pinned staging buffers")
        return np.empty(shape, dtype=np.uint16), False

    def host_expert(self, layer: int, expert: int) -> np.ndarray:
        """The host copy of one expert, [3 F D] bf16 bits (gate | up | down); write weights here."""
        return self.host[layer, expert]

    # ---- slot table ---------------------------------------------------------------------------------------
    def slot_of(self, layer: int, expert: int) -> int:
        """The slot holding (or receiving) this expert, -1 if none (host mirror, no device read)."""
        return int(self._table[layer, expert])

    def owner(self, slot: int) -> tuple[int, int] | None:
        return self._owner[slot]

    def resident(self, layer: int) -> dict[int, int]:
        """expert -> slot for one layer."""
        return {int(e): int(s) for e, s in enumerate(self._table[layer]) if s >= 0}

    def free_slots(self) -> list[int]:
        return [s for s, o in enumerate(self._owner) if o is None]

    def slot_arena(self) -> SlotArena:
        return SlotArena(self.arena, self.slot_table, self.geometry)

    def _assign(self, layer: int, expert: int, slot: int) -> tuple[int, int]:
        """Update the host mirror; returns (flat index to clear or -1, flat index to set)."""
        if not (0 <= layer < self.layers and 0 <= expert < self.geometry.experts and 0 <= slot < self.slots):
            raise ValueError(f"(layer {layer}, expert {expert}, slot {slot}) outside "
                             f"[0, {self.layers}) x [0, {self.geometry.experts}) x [0, {self.slots})")
        held = self.slot_of(layer, expert)
        if held >= 0:
            raise ValueError(f"expert {expert} of layer {layer} is already in slot {held}")
        clear = -1
        if self._owner[slot] is not None:
            old_layer, old_expert = self._owner[slot]
            self._table[old_layer, old_expert] = -1
            clear = old_layer * self.geometry.experts + old_expert
            self._counts["evictions"] += 1
        self._owner[slot] = (layer, expert)
        self._table[layer, expert] = slot
        return clear, layer * self.geometry.experts + expert

    # ---- copies -------------------------------------------------------------------------------------------
    def prefetch(self, layer: int, expert: int, slot: int) -> None:
        """Copy one expert into `slot` on the copy stream (evicting its owner); returns at once."""
        clear, set_index = self._assign(layer, expert, slot)
        self._counts["prefetches"] += 1
        self._counts["copies"] += 1
        self._counts["bytes"] += self.geometry.expert_bytes_bf16
        if not self.backend.is_gpu:
            self.arena[slot] = self.host[layer, expert]
            self.slot_table.flat[[i for i in (clear,) if i >= 0]] = -1
            self.slot_table.flat[set_index] = slot
            return
        self._copy_async(layer, expert, slot, clear, set_index)

    def _copy_async(self, layer: int, expert: int, slot: int, clear: int, set_index: int) -> None:
        stream = self.copy_stream
        with stream:
            if self._last_use[slot] is not None:
                stream.wait_event(self._last_use[slot])  # the compute that last read this slot is done
            if clear >= 0:
                self._table_write(clear, -1)
            src = self.host[layer, expert]
            if not self.pinned:
                src = self._stage(src)
            self._h2d(self.arena[slot].data.ptr, src.ctypes.data, self.geometry.expert_bytes_bf16)
            if not self.pinned:
                self._staging_free[self._next_staging].record(stream)
                self._next_staging = (self._next_staging + 1) % _STAGING_BUFFERS
            self._table_write(set_index, slot)
            self._landed[slot].record(stream)

    def _h2d(self, dst_ptr: int, src_ptr: int, nbytes: int) -> None:
        import cupy

        cupy.cuda.runtime.memcpyAsync(dst_ptr, src_ptr, nbytes, cupy.cuda.runtime.memcpyHostToDevice,
                                      self.copy_stream.ptr)

    def _table_write(self, flat_index: int, value: int) -> None:
        """One slot-table entry, by a 4-byte DMA from a constant pinned array of the values -1..S-1: a copy,
        not a kernel, so it never waits for SMs that a persistent compute kernel holds."""
        self._h2d(self.slot_table.data.ptr + 4 * flat_index, self._table_values.ctypes.data + 4 * (value + 1), 4)

    def _stage(self, src: np.ndarray) -> np.ndarray:
        """Pageable fallback: copy into a free pinned staging buffer."""
        b = self._next_staging
        self._staging_free[b].synchronize()  # SYNC: pageable mode only; the CPU must not overwrite a buffer the DMA still reads
        np.copyto(self._staging[b], src)
        return self._staging[b]

    def fetch_now(self, layer: int, expert: int, slot: int) -> int:
        """On-demand: make the expert resident (copying into `slot` if it is not) and have the compute
        stream wait for it. Returns the slot that holds it."""
        self._counts["fetch_now"] += 1
        held = self.slot_of(layer, expert)
        if held < 0:
            self.prefetch(layer, expert, slot)
            held = slot
        self._wait(held)
        return held

    def wait_ready(self, layer: int, experts: list[int]) -> None:
        """The compute stream waits until these experts' copies have landed (no host synchronisation)."""
        for e in experts:
            slot = self.slot_of(layer, e)
            if slot < 0:
                raise RuntimeError(f"expert {e} of layer {layer} is not resident; fetch it first")
            self._wait(slot)

    def _wait(self, slot: int) -> None:
        if self.backend.is_gpu:
            self.compute_stream.wait_event(self._landed[slot])

    def mark_used(self, layer: int) -> None:
        """Call after launching a kernel that reads `layer` through the slot table: its slots are not
        overwritten before that kernel is done."""
        if not self.backend.is_gpu:
            return
        import cupy

        event = cupy.cuda.Event(disable_timing=True)
        event.record(self.compute_stream)
        for slot in self.resident(layer).values():
            self._last_use[slot] = event

    def stats(self) -> dict[str, Any]:
        return {**self._counts, "pinned": self.pinned, "slots": self.slots, "expert_bytes": self.geometry.expert_bytes_bf16}
