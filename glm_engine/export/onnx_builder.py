"""A small ONNX graph writer whose weights go straight to an external data file as they are added.

Why not ``torch.onnx.export``: tracing needs the whole model materialised as a module, and the exporter then builds
an in-memory ``ModelProto`` holding a second copy of every weight before anything is written (the TorchScript path;
the dynamo path keeps the weights in its IR too). For GLM-130B (~260 GB in fp16) that is two copies of the model.
Here each initializer's bytes are appended to ``<model>.onnx.data`` the moment it is added and only its location
(offset, length) stays in the graph, so an export holds at most the tensor being written (plus whatever the caller
keeps). Writing nodes by hand also fixes the I/O names, the dtypes and which quantized op is emitted.
"""

from __future__ import annotations

import hashlib
import os
from itertools import count
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

# Offsets of external tensors are aligned so a runtime may memory-map them (ORT aligns its own external data to 4 KiB
# pages for mmap; 64 bytes keeps SIMD loads aligned, which is what matters when copying).
EXTERNAL_ALIGNMENT = 64

# torch dtype -> ONNX TensorProto data type (the values of onnx.TensorProto.DataType, imported lazily).
_ONNX_TYPE_NAMES = {
    torch.float32: "FLOAT",
    torch.float16: "FLOAT16",
    torch.bfloat16: "BFLOAT16",
    torch.int64: "INT64",
    torch.int32: "INT32",
    torch.int8: "INT8",
    torch.uint8: "UINT8",
    torch.bool: "BOOL",
}


def onnx_type(dtype: torch.dtype | str) -> int:
    """The ONNX element type for a torch dtype, or for a TensorProto name such as ``"INT4"``."""
    import onnx

    name = dtype if isinstance(dtype, str) else _ONNX_TYPE_NAMES[dtype]
    return int(getattr(onnx.TensorProto, name))


class GraphBuilder:
    """Collects nodes, graph inputs/outputs and initializers; weights are streamed to ``data_file``."""

    def __init__(self, data_file: Path, opset: int) -> None:
        self.data_file = Path(data_file)
        self.opset = opset
        self.nodes: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self.initializers: list[Any] = []
        self.domains: dict[str, int] = {}
        self._ids = count()
        self._data: BinaryIO = open(self.data_file, "wb")  # noqa: SIM115 (closed in finish)
        self._offset = 0
        # Of every byte of the data file, alignment padding included, so it is the file's checksum too (the ``files``
        # section) and a cache key: computed while writing, the file is never read back.
        self._sha = hashlib.sha256()

    # --- values -----------------------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        return f"/{hint}_{next(self._ids)}"

    def weight(
        self, name: str, tensor: torch.Tensor, element_type: int | None = None, dims: list[int] | None = None
    ) -> str:
        """Append ``tensor``'s bytes to the data file and add an initializer pointing at them.

        ``element_type``/``dims`` override the stored type and shape for packed types (INT4 holds two values per
        byte: pass the packed bytes as uint8 and the logical dims).
        """
        import onnx

        tensor = tensor.detach().contiguous().cpu()
        raw = tensor.reshape(-1).view(torch.uint8).numpy()
        pad = -self._offset % EXTERNAL_ALIGNMENT
        if pad:
            self._data.write(b"\0" * pad)
            self._sha.update(b"\0" * pad)
            self._offset += pad
        self._data.write(memoryview(raw))
        self._sha.update(memoryview(raw))
        proto = onnx.TensorProto()
        proto.name = name
        proto.data_type = element_type if element_type is not None else onnx_type(tensor.dtype)
        proto.dims.extend(dims if dims is not None else list(tensor.shape))
        for key, value in (("location", self.data_file.name), ("offset", self._offset), ("length", raw.nbytes)):
            entry = proto.external_data.add()
            entry.key, entry.value = key, str(value)
        proto.data_location = onnx.TensorProto.EXTERNAL
        self._offset += raw.nbytes
        self.initializers.append(proto)
        return name

    def const(self, value: Any, dtype: torch.dtype, hint: str = "const") -> str:
        """A small constant (scalar or shape vector) kept inside the graph."""
        from onnx import numpy_helper

        tensor = torch.tensor(value, dtype=dtype)
        name = self.fresh(hint)
        if dtype == torch.bfloat16:
            import onnx

            proto = onnx.helper.make_tensor(
                name, onnx_type(dtype), list(tensor.shape), tensor.view(torch.int16).numpy().tobytes(), raw=True
            )
        else:
            proto = numpy_helper.from_array(np.asarray(tensor.numpy()), name)
        self.initializers.append(proto)
        return name

    # --- nodes ------------------------------------------------------------------------------------------------
    def node(self, op: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "", **attrs: Any) -> Any:
        """Add one node; returns its output name (or the list of names when it has several)."""
        import onnx

        names = [self.fresh(op) for _ in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(
            onnx.helper.make_node(op, inputs, names, name=self.fresh(f"{op}_node"), domain=domain, **attrs)
        )
        if domain:
            self.domains.setdefault(domain, 1)
        return names[0] if len(names) == 1 else names

    def add_input(self, name: str, dtype: torch.dtype, shape: list[int | str]) -> str:
        import onnx

        self.inputs.append(onnx.helper.make_tensor_value_info(name, onnx_type(dtype), shape))
        return name

    def add_output(
        self, name: str, dtype: torch.dtype, shape: list[int | str], value: str, first: bool = False
    ) -> None:
        """Expose ``value`` as graph output ``name`` (through an Identity when the names differ), last or ``first``."""
        import onnx

        if value != name:
            self.node("Identity", [value], [name])
        self.outputs.insert(
            0 if first else len(self.outputs), onnx.helper.make_tensor_value_info(name, onnx_type(dtype), shape)
        )

    # --- finishing --------------------------------------------------------------------------------------------
    @property
    def weight_bytes(self) -> int:
        return self._offset

    @property
    def weights_sha256(self) -> str:
        """The sha256 of the data file as written so far."""
        return self._sha.hexdigest()

    def finish(self, model_file: Path, graph_name: str, producer: str, metadata: dict[str, str]) -> None:
        """Write the graph (without weights, which are already in the data file) to ``model_file``."""
        import onnx

        self._data.flush()
        os.fsync(self._data.fileno())
        self._data.close()
        graph = onnx.helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, self.initializers)
        opsets = [onnx.helper.make_opsetid("", self.opset)]
        opsets += [onnx.helper.make_opsetid(domain, version) for domain, version in self.domains.items()]
        model = onnx.helper.make_model(graph, opset_imports=opsets, producer_name=producer)
        # Keep the IR version at what the opset needs, so older runtimes still open the file.
        model.ir_version = min(model.ir_version, 10)
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        with open(model_file, "wb") as handle:
            handle.write(model.SerializeToString())
            handle.flush()
            os.fsync(handle.fileno())
