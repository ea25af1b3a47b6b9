// Reading the repository's documents from a test, wherever the compiled test runs from
// (test/ or .test-build/test/): the SDK's contract is docs/protocol.md, and tests compare the
// code with it so the two cannot drift.

import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The text of `relative` (e.g. `docs/protocol.md`) in the repository holding this file. */
export function repoFile(relative: string): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, relative))) {
    const up = dirname(dir);
    if (up === dir) throw new Error(`${relative} not found above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
  return readFileSync(join(dir, relative), 'utf8');
}

/** A close code row of docs/protocol.md section 6. */
export interface CloseRow {
  code: number;
  label: string;
  retry: string;
}

/** The rows of protocol.md's close-code table (`| code | label | meaning | retry? |`) and the
 * labels of its error-code table. */
export function protocolTables(): { close: CloseRow[]; errors: string[] } {
  const close: CloseRow[] = [];
  const errors: string[] = [];
  let inErrors = false;
  for (const line of repoFile('docs/protocol.md').split('\n')) {
    if (line.startsWith('#')) inErrors = line.includes('Error codes');
    const cells = line.split('|').map((c) => c.trim());
    if (cells.length < 4) continue;
    const first = cells[1] ?? '';
    if (/^\d+$/.test(first)) {
      close.push({ code: Number(first), label: (cells[2] ?? '').replaceAll('`', ''), retry: cells[cells.length - 2] ?? '' });
    } else if (inErrors && first.startsWith('`')) {
      errors.push(first.replaceAll('`', ''));
    }
  }
  return { close, errors };
}
