"""Sends Storage Commitment results (N-EVENT-REPORT, PS3.4 J.3.3) after the N-ACTION response.

On the same association while the modality keeps it open; otherwise on a new association to the host and
port registered for its AE title (`usgi peer add AE --host H --port P`), as the SCP role (PS3.4 J.3.3.1).
"""

from __future__ import annotations

import logging
import threading
import time

from pynetdicom import AE, build_role
from pynetdicom.association import Association
from pynetdicom.sop_class import StorageCommitmentPushModel

from service import modality
from service.bootstrap import Services
from service.peers import find_peer

log = logging.getLogger("service.dicom")

# The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5).
COMMITMENT_INSTANCE_UID = "1.2.840.10008.1.20.1.1"


class CommitmentReporter:
    def __init__(self, services: Services, retry_delays: tuple[float, ...] = (5.0, 30.0, 120.0)) -> None:
        self._services = services
        self._retry_delays = retry_delays
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def report_later(
        self, assoc: Association, commitment_id: int, transaction_uid: str, items: list[modality.CommitItem]
    ) -> None:
        threading.Thread(
            target=self._run,
            args=(assoc, commitment_id, transaction_uid, items),
            name=f"commitment-{commitment_id}",
            daemon=True,
        ).start()

    def resume_pending(self) -> int:
        """Deliver, on new associations, the reports an earlier process had not delivered when it stopped."""
        pending = modality.pending_commitments(self._services)
        for commitment_id, transaction_uid, calling_ae, items in pending:
            threading.Thread(
                target=self._deliver_later,
                args=(calling_ae, commitment_id, *modality.commitment_report(transaction_uid, items)),
                name=f"commitment-{commitment_id}",
                daemon=True,
            ).start()
        if pending:
            log.info("resuming %d undelivered storage commitment report(s)", len(pending))
        return len(pending)

    def _run(
        self, assoc: Association, commitment_id: int, transaction_uid: str, items: list[modality.CommitItem]
    ) -> None:
        event_type, ds = modality.commitment_report(transaction_uid, items)
        calling_ae = assoc.requestor.ae_title
        # Give the N-ACTION response time to leave before the report follows it on the same association.
        time.sleep(0.2)
        if assoc.is_established:
            try:
                status, _ = assoc.send_n_event_report(
                    ds, event_type, StorageCommitmentPushModel, COMMITMENT_INSTANCE_UID
                )
                if status is not None and getattr(status, "Status", 0xFFFF) == 0x0000:
                    modality.mark_commitment(self._services, commitment_id, True)
                    return
                error = "no or failed response on the same association"
            except Exception as exc:  # noqa: BLE001
                error = f"same association: {type(exc).__name__}"
            modality.mark_commitment(self._services, commitment_id, False, error)
        self._deliver_later(calling_ae, commitment_id, event_type, ds)

    def _deliver_later(self, calling_ae: str, commitment_id: int, event_type: int, ds) -> None:  # type: ignore[no-untyped-def]
        for delay in (0.0, *self._retry_delays):
            if self._stopping.wait(delay):
                return
            ok, error = self._send_new_association(calling_ae, event_type, ds)
            modality.mark_commitment(self._services, commitment_id, ok, error)
            if ok:
                return
        log.warning("storage commitment result for %s could not be delivered; retried at the next start", calling_ae)

    def _send_new_association(self, calling_ae: str, event_type: int, ds) -> tuple[bool, str | None]:  # type: ignore[no-untyped-def]
        peer = find_peer(self._services, calling_ae)
        if peer is None or not peer.host or not peer.port:
            return False, "peer has no registered host and port"
        ae = AE(ae_title=self._services.settings.ae_title)
        # A peer that accepts but never answers must not hold this thread past our own network timeout.
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self._services.settings.dicom_network_timeout
        ae.add_requested_context(StorageCommitmentPushModel)
        role = build_role(StorageCommitmentPushModel, scp_role=True)
        assoc = ae.associate(peer.host, peer.port, ae_title=calling_ae, ext_neg=[role])
        if not assoc.is_established:
            return False, "association to the peer failed"
        try:
            status, _ = assoc.send_n_event_report(ds, event_type, StorageCommitmentPushModel, COMMITMENT_INSTANCE_UID)
            ok = status is not None and getattr(status, "Status", 0xFFFF) == 0x0000
            return ok, None if ok else "the peer did not accept the report"
        finally:
            assoc.release()
