"""The EHR channels: CDS Hooks services, SMART App Launch, the FHIR API of assessments and the
HL7 v2 MLLP lab feed.

Service level, like azaguard.service: each module turns an EHR's request into the same records,
calls the same engine (`assess`) and the same service functions (authorise, act, audit), and hands
the result to a renderer (azaguard.render). Routers in azaguard.api / azaguard.web import these
modules; these modules never import a router.
"""
