"""Arguments of the real local runs the node self-tests start."""

from pathlib import Path

REFERENCE_SIGNER_PROFILE = Path(__file__).resolve().parents[1] / "examples" / "reference-signer-profile.yaml"
# The quickest real run that starts a node and reaches its tests: README's vendor example (the reference
# signer's contract on the node, no mesh; its tests begin about 10 s after the command).
REFERENCE_SIGNER_RUN = ("-m", "signer", "--custom-ca-signer-profile", str(REFERENCE_SIGNER_PROFILE))
