"""What the data looks like: columns, issue codes, report types and the pandera cell rules."""
