# Type hints of the attnlab package (the implementation is attnlab/__init__.py and the
# compiled attnlab._core). ArrayLike: numpy arrays, memoryviews, PyTorch CPU tensors.
from typing import Dict, List, Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

from attnlab import results as results

__version__: str
LAYOUTS: Tuple[str, str]

Mask = Union[None, Literal["none", "causal"], Tuple[Literal["window"], int, int], npt.ArrayLike]
Layout = Literal["bhsd", "bshd"]

@overload
def attention(q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike, *, variant: str = ...,
              mask: Mask = ..., key_lengths: Optional[Sequence[int]] = ...,
              scale: Optional[float] = ..., layout: Layout = ...,
              return_lse: Literal[False] = ..., threads: Optional[int] = ...,
              out: Optional[np.ndarray] = ..., k_scales: Optional[npt.ArrayLike] = ...,
              v_scales: Optional[npt.ArrayLike] = ...,
              memory_budget: Optional[int] = ..., softcap: Optional[float] = ...,
              alibi_slopes: Union[None, str, npt.ArrayLike] = ...,
              sinks: Optional[npt.ArrayLike] = ...,
              causal_top_left: bool = ...,
              causal_at_key_lengths: bool = ...,
              cu_seqlens_q: Optional[Sequence[int]] = ..., cu_seqlens_k: Optional[Sequence[int]] = ...,
              block_table: Optional[npt.ArrayLike] = ...) -> np.ndarray: ...
@overload
def attention(q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike, *, variant: str = ...,
              mask: Mask = ..., key_lengths: Optional[Sequence[int]] = ...,
              scale: Optional[float] = ..., layout: Layout = ...,
              return_lse: Literal[True], threads: Optional[int] = ...,
              out: Optional[np.ndarray] = ..., k_scales: Optional[npt.ArrayLike] = ...,
              v_scales: Optional[npt.ArrayLike] = ...,
              memory_budget: Optional[int] = ..., softcap: Optional[float] = ...,
              alibi_slopes: Union[None, str, npt.ArrayLike] = ...,
              sinks: Optional[npt.ArrayLike] = ...,
              causal_top_left: bool = ...,
              causal_at_key_lengths: bool = ...,
              cu_seqlens_q: Optional[Sequence[int]] = ..., cu_seqlens_k: Optional[Sequence[int]] = ...,
              block_table: Optional[npt.ArrayLike] = ...) -> Tuple[np.ndarray, np.ndarray]: ...
def weights(q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike, *,
            variant: Optional[str] = ..., mask: Mask = ...,
            key_lengths: Optional[Sequence[int]] = ..., scale: Optional[float] = ...,
            layout: Layout = ..., threads: Optional[int] = ..., memory_budget: Optional[int] = ...,
            return_output: bool = ..., softcap: Optional[float] = ...,
            alibi_slopes: Union[None, str, npt.ArrayLike] = ...,
            sinks: Optional[npt.ArrayLike] = ..., causal_top_left: bool = ...,
              causal_at_key_lengths: bool = ...,
            cu_seqlens_q: Optional[Sequence[int]] = ..., cu_seqlens_k: Optional[Sequence[int]] = ...,
            block_table: Optional[npt.ArrayLike] = ...
            ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]: ...
def reference(q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike, *, mask: Mask = ...,
              key_lengths: Optional[Sequence[int]] = ..., scale: Optional[float] = ...,
              layout: Layout = ..., return_lse: bool = ..., return_weights: bool = ...,
              k_scales: Optional[npt.ArrayLike] = ..., v_scales: Optional[npt.ArrayLike] = ...,
              softcap: Optional[float] = ..., alibi_slopes: Union[None, str, npt.ArrayLike] = ...,
              sinks: Optional[npt.ArrayLike] = ..., causal_top_left: bool = ...,
              causal_at_key_lengths: bool = ...,
              cu_seqlens_q: Optional[Sequence[int]] = ..., cu_seqlens_k: Optional[Sequence[int]] = ...,
              block_table: Optional[npt.ArrayLike] = ...
              ) -> Union[np.ndarray, Tuple[np.ndarray, ...]]: ...

class CheckRow:
    variant: str
    ran: bool
    ok: bool
    refused: str
    over_budget: bool
    max_abs_error: float
    max_rel_error: float
    bound: float
    error_over_bound: float
    first_failure: str
    ms: float
    path: str

class CheckReport(List[CheckRow]):
    problem: str
    reference_ms: float
    @property
    def ok(self) -> bool: ...

def check(q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike, *,
          variants: Optional[Sequence[str]] = ..., mask: Mask = ...,
          key_lengths: Optional[Sequence[int]] = ..., scale: Optional[float] = ...,
          layout: Layout = ..., threads: Optional[int] = ..., memory_budget: Optional[int] = ...,
          k_scales: Optional[npt.ArrayLike] = ..., v_scales: Optional[npt.ArrayLike] = ...,
          softcap: Optional[float] = ..., alibi_slopes: Union[None, str, npt.ArrayLike] = ...,
          sinks: Optional[npt.ArrayLike] = ..., causal_top_left: bool = ...,
              causal_at_key_lengths: bool = ...,
          cu_seqlens_q: Optional[Sequence[int]] = ..., cu_seqlens_k: Optional[Sequence[int]] = ...,
          block_table: Optional[npt.ArrayLike] = ...) -> CheckReport: ...
def grad(q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike, d_o: npt.ArrayLike, *,
         variant: str = ..., o: Optional[npt.ArrayLike] = ..., lse: Optional[npt.ArrayLike] = ...,
         mask: Mask = ..., key_lengths: Optional[Sequence[int]] = ...,
         scale: Optional[float] = ..., layout: Layout = ..., threads: Optional[int] = ...,
         memory_budget: Optional[int] = ...,
         cu_seqlens_q: Optional[Sequence[int]] = ..., cu_seqlens_k: Optional[Sequence[int]] = ...,
         softcap: Optional[float] = ..., alibi_slopes: Union[None, str, npt.ArrayLike] = ...,
         sinks: Optional[npt.ArrayLike] = ..., causal_top_left: bool = ...,
         causal_at_key_lengths: bool = ...) -> Tuple[np.ndarray, ...]: ...
def multi_head_attention(x: npt.ArrayLike, wq: npt.ArrayLike, wk: npt.ArrayLike,
                         wv: npt.ArrayLike, wo: npt.ArrayLike, heads: int, *, variant: str = ...,
                         mask: Mask = ..., key_lengths: Optional[Sequence[int]] = ...,
                         scale: Optional[float] = ..., threads: Optional[int] = ...,
                         memory_budget: Optional[int] = ...,
                         context: Optional[npt.ArrayLike] = ...) -> np.ndarray: ...

class VariantInfo:
    name: str
    summary: str
    supports_weights: bool
    materializes_scores: bool
    uses_highway: bool
    deterministic: bool
    has_backward: bool
    dtypes: Dict[str, List[str]]
    modifiers: List[str]
    paged_kv: bool
    backward_modifiers: List[str]

def variants() -> List[VariantInfo]: ...
def isa_path() -> Optional[str]: ...
def openblas_core() -> Dict[str, str]: ...
