"""Growth inside other people's training loops: `Gardener` for a loop you write, and
`GardenerCallback`s for the HuggingFace Trainer (`esper.integrations.hf`) and Lightning
(`esper.integrations.lightning`), each imported only when used."""

from esper.integrations.gardener import Gardener

__all__ = ["Gardener"]
