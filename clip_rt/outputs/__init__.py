"""What comes out of a run: records and resume, the batch report and its charts, the search index."""
