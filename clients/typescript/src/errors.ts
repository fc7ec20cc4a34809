// What an Ebb error says, decoded: the status code, the message and the google.rpc details
// (BadRequest field violations on INVALID_ARGUMENT; PreconditionFailure and ErrorInfo, with a
// machine-readable reason such as CONFIRM_COUNT_REQUIRED, on FAILED_PRECONDITION), which
// arrive in the grpc-status-details-bin trailer over gRPC and gRPC-Web alike.

import { Code, ConnectError } from "@connectrpc/connect";

import {
  BadRequestSchema,
  ErrorInfoSchema,
  PreconditionFailureSchema,
  type ErrorInfo,
  type PreconditionFailure_Violation,
} from "./gen/google/rpc/error_details_pb.js";

export { Code, ConnectError };

/** A failed call's status code, message and decoded details. */
export interface ErrorDetails {
  code: Code;
  /** The status code's name, e.g. `FAILED_PRECONDITION`. */
  codeName: string;
  message: string;
  /** `[field, description]` of each google.rpc.BadRequest field violation. */
  fieldViolations: [string, string][];
  /** The google.rpc.PreconditionFailure violations. */
  preconditionViolations: PreconditionFailure_Violation[];
  /** The google.rpc.ErrorInfo, if any. */
  errorInfo?: ErrorInfo;
  /** `errorInfo.reason`, or empty. */
  reason: string;
  /** `errorInfo.metadata`, or empty. */
  metadata: Record<string, string>;
}

/** `INVALID_ARGUMENT` for `Code.InvalidArgument`: the gRPC name of a code. */
export function codeName(code: Code): string {
  return (Code[code] ?? "UNKNOWN").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** Decodes what `error` (thrown by a call of any transport) says. */
export function errorDetails(error: unknown): ErrorDetails {
  const e = ConnectError.from(error);
  const info = e.findDetails(ErrorInfoSchema)[0];
  return {
    code: e.code,
    codeName: codeName(e.code),
    message: e.rawMessage,
    fieldViolations: e
      .findDetails(BadRequestSchema)
      .flatMap((b) => b.fieldViolations.map((v): [string, string] => [v.field, v.description])),
    preconditionViolations: e.findDetails(PreconditionFailureSchema).flatMap((p) => p.violations),
    errorInfo: info,
    reason: info?.reason ?? "",
    metadata: { ...(info?.metadata ?? {}) },
  };
}
