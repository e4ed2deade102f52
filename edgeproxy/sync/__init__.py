"""Sync from Personalize Admin (the Management API): client, writer of the export tree, poller, local fake."""
