"""clip-rt's export stage (installed as ``clip_rt_export``; needs the ``[export]`` extra).

torch and open_clip are imported inside functions only, so listing or importing this
package stays cheap.
"""

from .api import export_bundle, normalize_precisions
from .bundle import ExportInterrupted

__all__ = ["export_bundle", "normalize_precisions", "ExportInterrupted"]
