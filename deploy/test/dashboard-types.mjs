// Type-checks deploy/grafana/switchboard.json against Grafana's Dashboard type (@grafana/schema)
// with tsc: `node deploy/test/dashboard-types.mjs`, run by deploy/check. Exit code 1 on an error.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const json = readFileSync(join(here, '..', 'grafana', 'switchboard.json'), 'utf8');
const dir = mkdtempSync(join(here, '.dashboard-'));
try {
  writeFileSync(
    join(dir, 'dashboard.ts'),
    `import type { Dashboard } from '@grafana/schema';\nexport const dashboard: Dashboard = ${json};\n`,
  );
  const tsc = join(here, 'node_modules', 'typescript', 'bin', 'tsc');
  const r = spawnSync(
    process.execPath,
    [tsc, '--noEmit', '--strict', '--skipLibCheck', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', join(dir, 'dashboard.ts')],
    { cwd: here, encoding: 'utf8' },
  );
  process.stdout.write(r.stdout + r.stderr);
  process.exitCode = r.status === 0 ? 0 : 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
