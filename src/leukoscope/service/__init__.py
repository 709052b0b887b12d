"""The hematology-lab web service: classify uploads, review cells, sign off samples."""
