"""A live session: its actor (every change to tree and record), its turn, mailbox and fan-out."""
