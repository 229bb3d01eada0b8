// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Fixtures} from "./TkmsRegistry.t.sol";
import {TkmsRegistry} from "../src/TkmsRegistry.sol";

/// @dev One realistic life cycle calling every write, for the gas table in GAS.md:
///      bash gas.sh   (forge test --match-contract TkmsRegistryGas --isolate --gas-report)
///      With --isolate every top-level call is its own transaction, so the numbers include the
///      21000 base cost and calldata, as on a real chain.
contract TkmsRegistryGas is Fixtures {
    function test_lifecycle() public {
        deploy();
        vm.startPrank(OWNER);
        reg.setManager(MANAGER);
        reg.addGateway(GW1); // first gateway: also becomes primary
        reg.addGateway(GW2);
        reg.setPrimaryGateway(GW2);
        reg.removeGateway(GW1);
        reg.addRunner(RUN1);
        reg.addRunner(RUN2);
        reg.removeRunner(RUN1);
        // 4 nodes: 38-byte peer id, 2 endpoints, 33-byte key, attestation digest
        for (uint16 i = 1; i <= 4; i++) {
            reg.registerNode(i, peer(i), endpoints(i), nodeKey(i), attestation(i));
        }
        reg.updateNode(2, peer(2), endpoints(2), nodeKey(2), keccak256("re-attested"));
        reg.removeNode(4);
        vm.stopPrank();

        vm.prank(MANAGER);
        reg.publishEpoch(1, 2, 3, pk1(), SHARES_HASH, TRANSCRIPT_HASH); // genesis DKG
        vm.prank(MANAGER);
        reg.publishEpoch(2, 2, 3, pk1(), keccak256("s2"), keccak256("t2")); // reshare, same key

        vm.prank(OWNER);
        reg.approveKeyChange(pk3());
        vm.prank(OWNER);
        reg.cancelKeyChange();
        vm.prank(OWNER);
        reg.approveKeyChange(pk2());
        vm.prank(MANAGER);
        reg.publishEpoch(3, 2, 3, pk2(), keccak256("s3"), keccak256("t3")); // approved new key

        vm.prank(OWNER);
        reg.transferOwnership(STRANGER);
        vm.prank(STRANGER);
        reg.acceptOwnership();

        vm.assertEq(reg.kmsPublicKey(), pk2());
        vm.assertEq(reg.gateway(), GW2);
        vm.assertEq(reg.owner(), STRANGER);
    }
}
