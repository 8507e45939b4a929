"""Which labels the loaded policy wants for guests (pure).

The types are not hard-coded: they come from the policy's virtual context files, the same ones libvirt
reads (``virtual_domain_context``: process label, then an optional TCG one; ``virtual_image_context``:
image label, then the read-only content label).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from .models import Context, Level, ResourceClass
from .profiles import PROFILE_PROCESS_TYPES


class LabelSpec(BaseModel):
    """The four base contexts guests and their resources are labeled from."""

    model_config = ConfigDict(frozen=True)

    process: Context  # e.g. system_u:system_r:svirt_t:s0
    process_tcg: Context | None  # e.g. svirt_tcg_t, where the policy has one
    image: Context  # e.g. system_u:object_r:svirt_image_t:s0
    content: Context  # e.g. system_u:object_r:virt_content_t:s0

    @classmethod
    def from_context_files(cls, domain_text: str, image_text: str) -> LabelSpec:
        domain = _context_lines(domain_text, "virtual_domain_context")
        image = _context_lines(image_text, "virtual_image_context")
        if len(image) < 2:
            raise ValueError("virtual_image_context needs two lines: the image context, then the content one")
        return cls(
            process=domain[0],
            process_tcg=domain[1] if len(domain) > 1 else None,
            image=image[0],
            content=image[1],
        )

    def process_label(self, level: Level, tcg: bool = False, process_type: str | None = None) -> Context:
        """The guest's qemu label: the profile's process type when it has one (no TCG variant: the
        profile's rules hold for TCG too), else the policy's (TCG) type."""
        base = self.process_tcg if tcg and self.process_tcg is not None else self.process
        if process_type is not None:
            base = base.model_copy(update={"type": process_type})
        return base.with_level(level)

    @property
    def process_types(self) -> frozenset[str]:
        """Every type a guest's qemu runs as: the policy's, its TCG one, the profiles'."""
        own = {self.process.type} | ({self.process_tcg.type} if self.process_tcg else set())
        return frozenset(own) | PROFILE_PROCESS_TYPES

    def image_label(self, level: Level) -> Context:
        return self.image.with_level(level)

    def label_for(self, rclass: ResourceClass, level: Level) -> Context | None:
        """The label a resource of this class carries for a guest at ``level``."""
        if rclass is ResourceClass.PRIVATE:
            return self.image.with_level(level)
        if rclass is ResourceClass.SHARED:
            return self.image.with_level("s0")
        if rclass is ResourceClass.READONLY:
            return self.content.with_level("s0")
        return None


def _context_lines(text: str, what: str) -> list[Context]:
    lines = [line.strip() for line in text.splitlines()]
    contexts = [Context.parse(line) for line in lines if line and not line.startswith("#")]
    if not contexts:
        raise ValueError(f"{what} holds no context")
    return contexts
