// Validates Prometheus Operator objects (ServiceMonitor, PrometheusRule) against the
// operator's CRD schemas, as packaged by @kubernetes-models/prometheus-operator.
// Usage: node validate-crds.mjs FILE.json   (a JSON array of objects)
// Prints one line per object; exits 1 when any object is invalid or of an unknown kind.
import { readFileSync } from 'node:fs';
import { ServiceMonitor, PrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';

const kinds = { 'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor, 'monitoring.coreos.com/v1/PrometheusRule': PrometheusRule };
const objects = JSON.parse(readFileSync(process.argv[2], 'utf8'));
let failed = 0;
for (const obj of objects) {
  const id = `${obj.apiVersion}/${obj.kind}`;
  const Model = kinds[id];
  const name = `${obj.kind}/${obj.metadata?.name}`;
  if (!Model) {
    console.log(`ERROR ${name}: no schema for ${id}`);
    failed++;
    continue;
  }
  try {
    new Model(obj).validate();
    console.log(`OK ${name} (${id})`);
  } catch (e) {
    console.log(`ERROR ${name}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
