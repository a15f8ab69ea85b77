// The change stream of the DO-to-DO test: change `seq` of a shard is a pure
// function of `seq`, so the test can name every event a shard handed over
// from the sequence the shard's client persisted.
export function changeFor(seq) {
  const key = `k${seq % 37}`;
  const operation = seq % 7 === 3 ? 'DELETE' : seq % 3 === 1 ? 'UPDATE' : 'INSERT';
  const row = { id: key, n: seq, label: `v${seq}`, score: seq / 8 };
  const change = { operation, table: seq % 2 ? 'accounts' : 'ledger', rowId: key, timestamp: 1_760_000_000_000 + seq };
  if (operation !== 'DELETE') change.after = row;
  if (operation !== 'INSERT') change.before = { ...row, n: seq - 1 };
  return change;
}
