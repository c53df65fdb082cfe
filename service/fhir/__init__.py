"""Pure mapping of a procedure to FHIR R4 (fhir.resources R4B models): see :mod:`service.fhir.mapping`."""

from service.fhir.mapping import map_json, map_procedure, to_bundle, to_json
from service.fhir.record import ProcedureRecord

__all__ = ["ProcedureRecord", "map_json", "map_procedure", "to_bundle", "to_json"]
