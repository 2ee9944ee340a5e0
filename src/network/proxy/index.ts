export { createPortProxy, type PortEndpoint, type PortProxy, type PortProxyOptions, type PortRefusal, type PortResolver, type PortTarget } from './port-proxy.js';
