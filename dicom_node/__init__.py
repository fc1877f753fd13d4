"""The DICOM node: angiography system -> SCP -> spool -> worker -> model -> SEG -> PACS."""
