"""The worklist serves ris's scheduled procedure steps; MPPS state arrives with its issue."""
