// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Test, Vm} from "./utils/Test.sol";
import {TkmsRegistry} from "../src/TkmsRegistry.sol";

/// @dev Shared fixtures: accounts, valid/invalid keys, node helpers.
abstract contract Fixtures is Test {
    TkmsRegistry internal reg;

    address internal constant OWNER = address(0xA11CE);
    address internal constant MANAGER = address(0x3A4A6E4);
    address internal constant STRANGER = address(0xBAD);
    address internal constant GW1 = address(0x6001);
    address internal constant GW2 = address(0x6002);
    address internal constant GW3 = address(0x6003);
    address internal constant RUN1 = address(0x7001);
    address internal constant RUN2 = address(0x7002);

    uint256 internal constant P = 0xfffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2f;
    uint256 internal constant GX = 0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798;

    bytes32 internal constant SHARES_HASH = keccak256("public shares");
    bytes32 internal constant TRANSCRIPT_HASH = keccak256("transcript");

    function key(uint8 prefix, uint256 x) internal pure returns (bytes memory) {
        return abi.encodePacked(bytes1(prefix), x);
    }

    /// @dev Cluster keys: generator (both parities) and x = 1, all on the curve.
    function pk1() internal pure returns (bytes memory) {
        return key(0x02, GX);
    }

    function pk2() internal pure returns (bytes memory) {
        return key(0x03, GX);
    }

    function pk3() internal pure returns (bytes memory) {
        return key(0x02, 1);
    }

    /// @dev Node keys: x in {1,2,3,4,6,8} are on the curve (x in {0,5,7,9} are not).
    function nodeKey(uint16 i) internal pure returns (bytes memory) {
        uint256[6] memory xs = [uint256(1), 2, 3, 4, 6, 8];
        return key(0x03, xs[(i - 1) % 6]);
    }

    function peer(uint16 i) internal pure returns (bytes memory) {
        // identity multihash of an ed25519 key: 0x00 0x24 0x08 0x01 0x12 0x20 || 32 bytes
        return abi.encodePacked(hex"002408011220", keccak256(abi.encode("peer", i)));
    }

    function endpoints(uint16 i) internal pure returns (string[] memory e) {
        e = new string[](2);
        e[0] = string(abi.encodePacked("https://node", bytes1(uint8(0x30 + i % 10)), ".tkms.test:7000"));
        e[1] = string(abi.encodePacked("/ip4/127.0.0.1/tcp/900", bytes1(uint8(0x30 + i % 10))));
    }

    function attestation(uint16 i) internal pure returns (bytes32) {
        return keccak256(abi.encode("attestation", i));
    }

    function registerNode(uint16 i) internal {
        vm.prank(OWNER);
        reg.registerNode(i, peer(i), endpoints(i), nodeKey(i), attestation(i));
    }

    function err(bytes4 selector) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(selector);
    }

    function err(bytes4 selector, address a) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(selector, a);
    }

    function deploy() internal {
        vm.prank(OWNER);
        reg = new TkmsRegistry();
    }

    /// @dev Registry with a manager and `count` nodes.
    function deployWithNodes(uint16 count) internal {
        deploy();
        vm.prank(OWNER);
        reg.setManager(MANAGER);
        for (uint16 i = 1; i <= count; i++) {
            registerNode(i);
        }
    }

    function publish(uint64 e, uint16 t, uint16 n, bytes memory k) internal {
        vm.prank(MANAGER);
        reg.publishEpoch(e, t, n, k, SHARES_HASH, TRANSCRIPT_HASH);
    }
}

contract OwnershipTest is Fixtures {
    function setUp() public {
        deploy();
    }

    function test_constructor_setsOwnerAndEmits() public {
        vm.expectEmit(true, true, true, true);
        emit TkmsRegistry.OwnershipTransferred(address(0), STRANGER);
        vm.prank(STRANGER);
        TkmsRegistry r = new TkmsRegistry();
        vm.assertEq(r.owner(), STRANGER);
        vm.assertEq(r.pendingOwner(), address(0));
        vm.assertEq(r.manager(), address(0));
        vm.assertEq(uint256(r.currentEpoch()), 0);
        vm.assertEq(r.nodeCount(), 0);
    }

    function test_transferOwnership_revertsForNonOwner() public {
        vm.expectRevert(err(TkmsRegistry.NotOwner.selector, STRANGER));
        vm.prank(STRANGER);
        reg.transferOwnership(STRANGER);
    }

    function test_transferOwnership_twoStep() public {
        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.OwnershipTransferStarted(OWNER, GW1);
        vm.prank(OWNER);
        reg.transferOwnership(GW1);
        vm.assertEq(reg.pendingOwner(), GW1);
        vm.assertEq(reg.owner(), OWNER); // nothing moves before acceptance

        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.OwnershipTransferred(OWNER, GW1);
        vm.prank(GW1);
        reg.acceptOwnership();
        vm.assertEq(reg.owner(), GW1);
        vm.assertEq(reg.pendingOwner(), address(0));

        // the old owner lost its rights, the new one has them
        vm.expectRevert(err(TkmsRegistry.NotOwner.selector, OWNER));
        vm.prank(OWNER);
        reg.setManager(MANAGER);
        vm.prank(GW1);
        reg.setManager(MANAGER);
        vm.assertEq(reg.manager(), MANAGER);
    }

    function test_acceptOwnership_revertsForNonPending() public {
        vm.prank(OWNER);
        reg.transferOwnership(GW1);
        vm.expectRevert(err(TkmsRegistry.NotPendingOwner.selector, STRANGER));
        vm.prank(STRANGER);
        reg.acceptOwnership();
        // even the owner cannot accept on behalf of the pending owner
        vm.expectRevert(err(TkmsRegistry.NotPendingOwner.selector, OWNER));
        vm.prank(OWNER);
        reg.acceptOwnership();
    }

    function test_acceptOwnership_revertsWithNoPendingTransfer() public {
        vm.expectRevert(err(TkmsRegistry.NotPendingOwner.selector, STRANGER));
        vm.prank(STRANGER);
        reg.acceptOwnership();
    }

    function test_transferOwnership_zeroCancels() public {
        vm.prank(OWNER);
        reg.transferOwnership(GW1);
        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.OwnershipTransferStarted(OWNER, address(0));
        vm.prank(OWNER);
        reg.transferOwnership(address(0));
        vm.assertEq(reg.pendingOwner(), address(0));
        vm.expectRevert(err(TkmsRegistry.NotPendingOwner.selector, GW1));
        vm.prank(GW1);
        reg.acceptOwnership();
    }
}

contract RolesTest is Fixtures {
    function setUp() public {
        deploy();
    }

    // ----- manager -----

    function test_setManager_revertsForNonOwner() public {
        vm.expectRevert(err(TkmsRegistry.NotOwner.selector, STRANGER));
        vm.prank(STRANGER);
        reg.setManager(STRANGER);
    }

    function test_setManager_emitsAndSets() public {
        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.ManagerChanged(address(0), MANAGER);
        vm.prank(OWNER);
        reg.setManager(MANAGER);
        vm.assertEq(reg.manager(), MANAGER);

        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.ManagerChanged(MANAGER, address(0));
        vm.prank(OWNER);
        reg.setManager(address(0));
        vm.assertEq(reg.manager(), address(0));
    }

    // ----- gateways -----

    function test_addGateway_revertsForNonOwner() public {
        vm.expectRevert(err(TkmsRegistry.NotOwner.selector, STRANGER));
        vm.prank(STRANGER);
        reg.addGateway(GW1);
    }

    function test_addGateway_revertsForZero() public {
        vm.expectRevert(err(TkmsRegistry.ZeroAddress.selector));
        vm.prank(OWNER);
        reg.addGateway(address(0));
    }

    function test_addGateway_revertsForDuplicate() public {
        vm.startPrank(OWNER);
        reg.addGateway(GW1);
        vm.expectRevert(err(TkmsRegistry.GatewayAlreadyAdded.selector, GW1));
        reg.addGateway(GW1);
        vm.stopPrank();
    }

    function test_gateway_revertsWhenNone() public {
        vm.expectRevert(err(TkmsRegistry.NoGateway.selector));
        reg.gateway();
        vm.assertFalse(reg.isGateway(GW1));
        vm.assertEq(reg.gateways().length, 0);
    }

    function test_addGateway_firstBecomesPrimary() public {
        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.GatewayAdded(GW1);
        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.PrimaryGatewayChanged(address(0), GW1);
        vm.prank(OWNER);
        reg.addGateway(GW1);
        vm.assertEq(reg.gateway(), GW1);
        vm.assertTrue(reg.isGateway(GW1));

        // the second one is added without changing the primary: exactly one event
        vm.recordLogs();
        vm.prank(OWNER);
        reg.addGateway(GW2);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        vm.assertEq(logs.length, 1);
        vm.assertEq(logs[0].topics[0], TkmsRegistry.GatewayAdded.selector);
        vm.assertEq(logs[0].topics[1], bytes32(uint256(uint160(GW2))));
        vm.assertEq(reg.gateway(), GW1);
        vm.assertTrue(reg.isGateway(GW2));
        vm.assertEq(reg.gateways().length, 2);
    }

    function test_setPrimaryGateway() public {
        vm.startPrank(OWNER);
        reg.addGateway(GW1);
        reg.addGateway(GW2);
        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.PrimaryGatewayChanged(GW1, GW2);
        reg.setPrimaryGateway(GW2);
        vm.stopPrank();
        vm.assertEq(reg.gateway(), GW2);
    }

    function test_setPrimaryGateway_revertsForNonOwner() public {
        vm.prank(OWNER);
        reg.addGateway(GW1);
        vm.expectRevert(err(TkmsRegistry.NotOwner.selector, STRANGER));
        vm.prank(STRANGER);
        reg.setPrimaryGateway(GW1);
    }

    function test_setPrimaryGateway_revertsForNonGateway() public {
        vm.expectRevert(err(TkmsRegistry.NotAGateway.selector, GW1));
        vm.prank(OWNER);
        reg.setPrimaryGateway(GW1);
    }

    function test_removeGateway_revertsForNonOwner() public {
        vm.prank(OWNER);
        reg.addGateway(GW1);
        vm.expectRevert(err(TkmsRegistry.NotOwner.selector, STRANGER));
        vm.prank(STRANGER);
        reg.removeGateway(GW1);
    }

    function test_removeGateway_revertsForNonGateway() public {
        vm.expectRevert(err(TkmsRegistry.NotAGateway.selector, GW1));
        vm.prank(OWNER);
        reg.removeGateway(GW1);
    }

    function test_removeGateway_revertsForPrimaryWhileOthersExist() public {
        vm.startPrank(OWNER);
        reg.addGateway(GW1);
        reg.addGateway(GW2);
        vm.expectRevert(err(TkmsRegistry.CannotRemovePrimaryGateway.selector, GW1));
        reg.removeGateway(GW1);
        vm.stopPrank();
    }

    function test_removeGateway_nonPrimary_swapAndPop() public {
        vm.startPrank(OWNER);
        reg.addGateway(GW1);
        reg.addGateway(GW2);
        reg.addGateway(GW3);
        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.GatewayRemoved(GW2);
        reg.removeGateway(GW2);
        vm.stopPrank();
        address[] memory g = reg.gateways();
        vm.assertEq(g.length, 2);
        vm.assertEq(g[0], GW1);
        vm.assertEq(g[1], GW3);
        vm.assertFalse(reg.isGateway(GW2));
        vm.assertTrue(reg.isGateway(GW3));
        vm.assertEq(reg.gateway(), GW1);
        // GW3 moved into slot 0..1 correctly: removing it still works
        vm.prank(OWNER);
        reg.removeGateway(GW3);
        vm.assertEq(reg.gateways().length, 1);
    }

    function test_removeGateway_lastPrimaryClears() public {
        vm.startPrank(OWNER);
        reg.addGateway(GW1);
        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.PrimaryGatewayChanged(GW1, address(0));
        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.GatewayRemoved(GW1);
        reg.removeGateway(GW1);
        vm.stopPrank();
        vm.expectRevert(err(TkmsRegistry.NoGateway.selector));
        reg.gateway();
        // a new gateway becomes primary again
        vm.prank(OWNER);
        reg.addGateway(GW2);
        vm.assertEq(reg.gateway(), GW2);
    }

    function test_removeGateway_afterSwitchingPrimary() public {
        vm.startPrank(OWNER);
        reg.addGateway(GW1);
        reg.addGateway(GW2);
        reg.setPrimaryGateway(GW2);
        reg.removeGateway(GW1);
        vm.stopPrank();
        vm.assertEq(reg.gateway(), GW2);
        vm.assertFalse(reg.isGateway(GW1));
    }

    // ----- runners -----

    function test_addRunner_revertsForNonOwner() public {
        vm.expectRevert(err(TkmsRegistry.NotOwner.selector, STRANGER));
        vm.prank(STRANGER);
        reg.addRunner(RUN1);
    }

    function test_addRunner_revertsForZero() public {
        vm.expectRevert(err(TkmsRegistry.ZeroAddress.selector));
        vm.prank(OWNER);
        reg.addRunner(address(0));
    }

    function test_addRunner_revertsForDuplicate() public {
        vm.startPrank(OWNER);
        reg.addRunner(RUN1);
        vm.expectRevert(err(TkmsRegistry.RunnerAlreadyAdded.selector, RUN1));
        reg.addRunner(RUN1);
        vm.stopPrank();
    }

    function test_removeRunner_revertsForNonOwner() public {
        vm.prank(OWNER);
        reg.addRunner(RUN1);
        vm.expectRevert(err(TkmsRegistry.NotOwner.selector, STRANGER));
        vm.prank(STRANGER);
        reg.removeRunner(RUN1);
    }

    function test_removeRunner_revertsForNonRunner() public {
        vm.expectRevert(err(TkmsRegistry.NotARunner.selector, RUN1));
        vm.prank(OWNER);
        reg.removeRunner(RUN1);
    }

    function test_runners_addRemoveEmit() public {
        vm.startPrank(OWNER);
        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.RunnerAdded(RUN1);
        reg.addRunner(RUN1);
        reg.addRunner(RUN2);
        vm.assertTrue(reg.isRunner(RUN1));
        vm.assertTrue(reg.isRunner(RUN2));
        vm.assertFalse(reg.isRunner(STRANGER));
        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.RunnerRemoved(RUN1);
        reg.removeRunner(RUN1);
        vm.stopPrank();
        vm.assertFalse(reg.isRunner(RUN1));
        address[] memory r = reg.runners();
        vm.assertEq(r.length, 1);
        vm.assertEq(r[0], RUN2);
        // roles are independent
        vm.assertFalse(reg.isGateway(RUN2));
    }
}

contract NodesTest is Fixtures {
    function setUp() public {
        deploy();
    }

    function assertNode(uint16 i, bytes memory peerId, string[] memory eps, bytes memory k, bytes32 att)
        internal
        view
    {
        TkmsRegistry.Node memory n = reg.node(i);
        vm.assertEq(uint256(n.index), uint256(i));
        vm.assertEq(n.peerId, peerId);
        vm.assertEq(n.endpoints.length, eps.length);
        for (uint256 j = 0; j < eps.length; j++) {
            vm.assertEq(n.endpoints[j], eps[j]);
        }
        vm.assertEq(n.publicKey, k);
        vm.assertEq(n.attestationDigest, att);
    }

    function expectRegisterRevert(
        uint16 i,
        bytes memory peerId,
        string[] memory eps,
        bytes memory k,
        bytes memory revertData
    ) internal {
        vm.expectRevert(revertData);
        vm.prank(OWNER);
        reg.registerNode(i, peerId, eps, k, bytes32(0));
        vm.assertFalse(reg.hasNode(i));
    }

    function test_registerNode_storesAndEmits() public {
        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.NodeRegistered(1, peer(1), endpoints(1), nodeKey(1), attestation(1));
        registerNode(1);
        assertNode(1, peer(1), endpoints(1), nodeKey(1), attestation(1));
        vm.assertTrue(reg.hasNode(1));
        vm.assertEq(reg.nodeCount(), 1);
        vm.assertEq(uint256(reg.nodeIndices()[0]), 1);
    }

    function test_registerNode_zeroAttestationAllowed() public {
        vm.prank(OWNER);
        reg.registerNode(7, peer(7), endpoints(7), nodeKey(7), bytes32(0));
        vm.assertEq(reg.node(7).attestationDigest, bytes32(0));
    }

    function test_registerNode_revertsForNonOwner() public {
        vm.prank(OWNER);
        reg.setManager(MANAGER);
        vm.expectRevert(err(TkmsRegistry.NotOwner.selector, STRANGER));
        vm.prank(STRANGER);
        reg.registerNode(1, peer(1), endpoints(1), nodeKey(1), bytes32(0));
        // the manager cannot register nodes either
        vm.expectRevert(err(TkmsRegistry.NotOwner.selector, MANAGER));
        vm.prank(MANAGER);
        reg.registerNode(1, peer(1), endpoints(1), nodeKey(1), bytes32(0));
    }

    function test_registerNode_revertsForIndexZero() public {
        expectRegisterRevert(0, peer(1), endpoints(1), nodeKey(1), err(TkmsRegistry.InvalidNodeIndex.selector));
    }

    function test_registerNode_revertsForExistingIndex() public {
        registerNode(1);
        vm.expectRevert(abi.encodeWithSelector(TkmsRegistry.NodeAlreadyRegistered.selector, uint16(1)));
        vm.prank(OWNER);
        reg.registerNode(1, peer(2), endpoints(2), nodeKey(2), bytes32(0));
    }

    function test_registerNode_revertsForBadPeerId() public {
        expectRegisterRevert(
            1, "", endpoints(1), nodeKey(1), abi.encodeWithSelector(TkmsRegistry.InvalidPeerId.selector, 0)
        );
        expectRegisterRevert(
            1,
            new bytes(65),
            endpoints(1),
            nodeKey(1),
            abi.encodeWithSelector(TkmsRegistry.InvalidPeerId.selector, 65)
        );
        // 64 bytes is the maximum
        vm.prank(OWNER);
        reg.registerNode(1, new bytes(64), endpoints(1), nodeKey(1), bytes32(0));
    }

    function test_registerNode_revertsForBadEndpointCount() public {
        expectRegisterRevert(
            1,
            peer(1),
            new string[](0),
            nodeKey(1),
            abi.encodeWithSelector(TkmsRegistry.InvalidEndpointCount.selector, 0)
        );
        string[] memory nine = new string[](9);
        for (uint256 j = 0; j < 9; j++) {
            nine[j] = "x";
        }
        expectRegisterRevert(
            1, peer(1), nine, nodeKey(1), abi.encodeWithSelector(TkmsRegistry.InvalidEndpointCount.selector, 9)
        );
        // 8 is the maximum
        string[] memory eight = new string[](8);
        for (uint256 j = 0; j < 8; j++) {
            eight[j] = "x";
        }
        vm.prank(OWNER);
        reg.registerNode(1, peer(1), eight, nodeKey(1), bytes32(0));
        vm.assertEq(reg.node(1).endpoints.length, 8);
    }

    function test_registerNode_revertsForBadEndpoint() public {
        string[] memory eps = endpoints(1);
        eps[1] = "";
        expectRegisterRevert(
            1, peer(1), eps, nodeKey(1), abi.encodeWithSelector(TkmsRegistry.InvalidEndpoint.selector, 1)
        );
        eps[1] = "ok";
        eps[0] = string(new bytes(257));
        expectRegisterRevert(
            1, peer(1), eps, nodeKey(1), abi.encodeWithSelector(TkmsRegistry.InvalidEndpoint.selector, 0)
        );
        eps[0] = string(new bytes(256)); // maximum length
        vm.prank(OWNER);
        reg.registerNode(1, peer(1), eps, nodeKey(1), bytes32(0));
    }

    function test_registerNode_revertsForBadKeyLength() public {
        expectRegisterRevert(
            1, peer(1), endpoints(1), "", abi.encodeWithSelector(TkmsRegistry.InvalidKeyLength.selector, 0)
        );
        expectRegisterRevert(
            1,
            peer(1),
            endpoints(1),
            abi.encodePacked(GX),
            abi.encodeWithSelector(TkmsRegistry.InvalidKeyLength.selector, 32)
        );
        // uncompressed (65-byte) keys are refused
        expectRegisterRevert(
            1,
            peer(1),
            endpoints(1),
            abi.encodePacked(bytes1(0x04), GX, uint256(1)),
            abi.encodeWithSelector(TkmsRegistry.InvalidKeyLength.selector, 65)
        );
        expectRegisterRevert(
            1,
            peer(1),
            endpoints(1),
            abi.encodePacked(nodeKey(1), bytes1(0)),
            abi.encodeWithSelector(TkmsRegistry.InvalidKeyLength.selector, 34)
        );
    }

    function test_registerNode_revertsForBadKeyPrefix() public {
        expectRegisterRevert(
            1,
            peer(1),
            endpoints(1),
            key(0x04, GX),
            abi.encodeWithSelector(TkmsRegistry.InvalidKeyPrefix.selector, bytes1(0x04))
        );
        expectRegisterRevert(
            1,
            peer(1),
            endpoints(1),
            key(0x00, GX),
            abi.encodeWithSelector(TkmsRegistry.InvalidKeyPrefix.selector, bytes1(0x00))
        );
    }

    function test_registerNode_revertsForKeyNotOnCurve() public {
        bytes memory e = err(TkmsRegistry.KeyNotOnCurve.selector);
        expectRegisterRevert(1, peer(1), endpoints(1), key(0x02, 0), e); // 7 is a non-residue
        expectRegisterRevert(1, peer(1), endpoints(1), key(0x03, 5), e);
        expectRegisterRevert(1, peer(1), endpoints(1), key(0x02, P), e); // non-canonical
        expectRegisterRevert(1, peer(1), endpoints(1), key(0x02, P + 1), e); // == 1 mod p, non-canonical
        expectRegisterRevert(1, peer(1), endpoints(1), key(0x02, type(uint256).max), e);
    }

    function test_registerNode_revertsForDuplicatePeerId() public {
        registerNode(1);
        expectRegisterRevert(
            2, peer(1), endpoints(2), nodeKey(2), abi.encodeWithSelector(TkmsRegistry.DuplicatePeerId.selector, 1)
        );
    }

    function test_registerNode_revertsForDuplicateNodeKey() public {
        registerNode(1);
        expectRegisterRevert(
            2, peer(2), endpoints(2), nodeKey(1), abi.encodeWithSelector(TkmsRegistry.DuplicateNodeKey.selector, 1)
        );
    }

    function test_updateNode_replacesAndEmits() public {
        registerNode(1);
        registerNode(2);
        string[] memory eps = new string[](1);
        eps[0] = "grpc://10.0.0.9:50051";
        bytes32 att = keccak256("new attestation");
        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.NodeUpdated(1, peer(9), eps, nodeKey(3), att);
        vm.prank(OWNER);
        reg.updateNode(1, peer(9), eps, nodeKey(3), att);
        assertNode(1, peer(9), eps, nodeKey(3), att);
        vm.assertEq(reg.nodeCount(), 2);
        // the old peer id and key are free again
        vm.prank(OWNER);
        reg.registerNode(4, peer(1), endpoints(4), nodeKey(1), bytes32(0));
    }

    function test_updateNode_keepsOwnPeerIdAndKey() public {
        registerNode(1);
        vm.prank(OWNER);
        reg.updateNode(1, peer(1), endpoints(1), nodeKey(1), keccak256("re-attested"));
        vm.assertEq(reg.node(1).attestationDigest, keccak256("re-attested"));
        // the mappings still protect them
        expectRegisterRevert(
            2, peer(1), endpoints(2), nodeKey(2), abi.encodeWithSelector(TkmsRegistry.DuplicatePeerId.selector, 1)
        );
        expectRegisterRevert(
            2, peer(2), endpoints(2), nodeKey(1), abi.encodeWithSelector(TkmsRegistry.DuplicateNodeKey.selector, 1)
        );
    }

    function test_updateNode_revertsForNonOwner() public {
        registerNode(1);
        vm.expectRevert(err(TkmsRegistry.NotOwner.selector, STRANGER));
        vm.prank(STRANGER);
        reg.updateNode(1, peer(1), endpoints(1), nodeKey(1), bytes32(0));
    }

    function test_updateNode_revertsForUnknownNode() public {
        vm.expectRevert(abi.encodeWithSelector(TkmsRegistry.UnknownNode.selector, uint16(3)));
        vm.prank(OWNER);
        reg.updateNode(3, peer(3), endpoints(3), nodeKey(3), bytes32(0));
    }

    function test_updateNode_revertsForDuplicatesAndBadInputWithoutChange() public {
        registerNode(1);
        registerNode(2);
        vm.startPrank(OWNER);
        vm.expectRevert(abi.encodeWithSelector(TkmsRegistry.DuplicatePeerId.selector, 2));
        reg.updateNode(1, peer(2), endpoints(1), nodeKey(1), bytes32(0));
        vm.expectRevert(abi.encodeWithSelector(TkmsRegistry.DuplicateNodeKey.selector, 2));
        reg.updateNode(1, peer(1), endpoints(1), nodeKey(2), bytes32(0));
        vm.expectRevert(err(TkmsRegistry.KeyNotOnCurve.selector));
        reg.updateNode(1, peer(1), endpoints(1), key(0x02, 0), bytes32(0));
        vm.expectRevert(abi.encodeWithSelector(TkmsRegistry.InvalidPeerId.selector, 0));
        reg.updateNode(1, "", endpoints(1), nodeKey(1), bytes32(0));
        vm.stopPrank();
        assertNode(1, peer(1), endpoints(1), nodeKey(1), attestation(1));
    }

    function test_removeNode_emitsAndFrees() public {
        registerNode(1);
        registerNode(2);
        registerNode(3);
        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.NodeRemoved(1);
        vm.prank(OWNER);
        reg.removeNode(1);
        vm.assertFalse(reg.hasNode(1));
        vm.assertEq(reg.nodeCount(), 2);
        uint16[] memory idx = reg.nodeIndices();
        vm.assertEq(uint256(idx[0]), 3); // swap-and-pop
        vm.assertEq(uint256(idx[1]), 2);
        vm.expectRevert(abi.encodeWithSelector(TkmsRegistry.UnknownNode.selector, uint16(1)));
        reg.node(1);
        // the moved node is still removable, and index/peer id/key can be reused
        vm.prank(OWNER);
        reg.removeNode(3);
        vm.assertEq(reg.nodeCount(), 1);
        registerNode(1);
        assertNode(1, peer(1), endpoints(1), nodeKey(1), attestation(1));
    }

    function test_removeNode_revertsForNonOwner() public {
        registerNode(1);
        vm.expectRevert(err(TkmsRegistry.NotOwner.selector, STRANGER));
        vm.prank(STRANGER);
        reg.removeNode(1);
    }

    function test_removeNode_revertsForUnknownNode() public {
        vm.expectRevert(abi.encodeWithSelector(TkmsRegistry.UnknownNode.selector, uint16(5)));
        vm.prank(OWNER);
        reg.removeNode(5);
    }

    function test_node_revertsForUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(TkmsRegistry.UnknownNode.selector, uint16(0)));
        reg.node(0);
    }

    function test_isValidCompressedKey() public view {
        vm.assertTrue(reg.isValidCompressedKey(pk1()));
        vm.assertTrue(reg.isValidCompressedKey(pk2()));
        vm.assertTrue(reg.isValidCompressedKey(pk3()));
        vm.assertFalse(reg.isValidCompressedKey(""));
        vm.assertFalse(reg.isValidCompressedKey(abi.encodePacked(GX)));
        vm.assertFalse(reg.isValidCompressedKey(key(0x04, GX)));
        vm.assertFalse(reg.isValidCompressedKey(key(0x02, 0)));
        vm.assertFalse(reg.isValidCompressedKey(key(0x02, 5)));
        vm.assertFalse(reg.isValidCompressedKey(key(0x02, P + 1)));
    }
}

contract EpochsTest is Fixtures {
    function setUp() public {
        deployWithNodes(3);
    }

    function expectPublishRevert(uint64 e, uint16 t, uint16 n, bytes memory k, bytes memory revertData) internal {
        vm.expectRevert(revertData);
        vm.prank(MANAGER);
        reg.publishEpoch(e, t, n, k, SHARES_HASH, TRANSCRIPT_HASH);
    }

    function test_views_beforeFirstEpoch() public {
        vm.assertEq(uint256(reg.currentEpoch()), 0);
        vm.assertEq(reg.epochNumbers().length, 0);
        vm.expectRevert(err(TkmsRegistry.NoEpochPublished.selector));
        reg.kmsPublicKey();
        vm.expectRevert(abi.encodeWithSelector(TkmsRegistry.UnknownEpoch.selector, uint64(0)));
        reg.epoch(0);
        vm.expectRevert(abi.encodeWithSelector(TkmsRegistry.UnknownEpoch.selector, uint64(1)));
        reg.epoch(1);
    }

    function test_publishEpoch_genesisStoresAndEmits() public {
        vm.warp(1_800_000_000);
        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.PublicKeyChanged(1, "", pk1());
        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.EpochPublished(1, 2, 3, pk1(), SHARES_HASH, TRANSCRIPT_HASH);
        publish(1, 2, 3, pk1());

        vm.assertEq(reg.kmsPublicKey(), pk1());
        vm.assertEq(uint256(reg.currentEpoch()), 1);
        TkmsRegistry.Epoch memory e = reg.epoch(1);
        vm.assertEq(uint256(e.epoch), 1);
        vm.assertEq(uint256(e.t), 2);
        vm.assertEq(uint256(e.n), 3);
        vm.assertEq(e.publicKey, pk1());
        vm.assertEq(e.publicSharesHash, SHARES_HASH);
        vm.assertEq(e.transcriptHash, TRANSCRIPT_HASH);
        vm.assertEq(uint256(e.publishedAt), 1_800_000_000);
        vm.assertEq(reg.epochNumbers().length, 1);
    }

    function test_publishEpoch_reshareKeepsKeyWithOneEvent() public {
        publish(1, 2, 3, pk1());
        vm.recordLogs();
        vm.prank(MANAGER);
        reg.publishEpoch(5, 3, 3, pk1(), keccak256("shares 5"), keccak256("transcript 5"));
        Vm.Log[] memory logs = vm.getRecordedLogs();
        vm.assertEq(logs.length, 1); // EpochPublished only, no PublicKeyChanged
        vm.assertEq(logs[0].topics[0], TkmsRegistry.EpochPublished.selector);
        vm.assertEq(logs[0].topics[1], bytes32(uint256(5)));
        vm.assertEq(uint256(reg.currentEpoch()), 5);
        vm.assertEq(uint256(reg.epoch(5).t), 3);
        vm.assertEq(reg.epoch(5).transcriptHash, keccak256("transcript 5"));
        vm.assertEq(uint256(reg.epoch(1).t), 2); // history kept
        vm.assertEq(reg.kmsPublicKey(), pk1());
        uint64[] memory nums = reg.epochNumbers();
        vm.assertEq(nums.length, 2);
        vm.assertEq(uint256(nums[1]), 5);
        vm.expectRevert(abi.encodeWithSelector(TkmsRegistry.UnknownEpoch.selector, uint64(3)));
        reg.epoch(3);
    }

    function test_publishEpoch_revertsForNonManager() public {
        expectNotManager(OWNER);
        expectNotManager(STRANGER);
        // revoking the manager disables publication
        vm.prank(OWNER);
        reg.setManager(address(0));
        expectNotManager(MANAGER);
    }

    function expectNotManager(address caller) internal {
        vm.expectRevert(err(TkmsRegistry.NotManager.selector, caller));
        vm.prank(caller);
        reg.publishEpoch(1, 1, 1, pk1(), SHARES_HASH, TRANSCRIPT_HASH);
    }

    function test_publishEpoch_revertsForNonIncreasingEpoch() public {
        expectPublishRevert(
            0, 1, 1, pk1(), abi.encodeWithSelector(TkmsRegistry.EpochNotIncreasing.selector, uint64(0), uint64(0))
        );
        publish(4, 2, 3, pk1());
        expectPublishRevert(
            4, 2, 3, pk1(), abi.encodeWithSelector(TkmsRegistry.EpochNotIncreasing.selector, uint64(4), uint64(4))
        );
        expectPublishRevert(
            2, 2, 3, pk1(), abi.encodeWithSelector(TkmsRegistry.EpochNotIncreasing.selector, uint64(2), uint64(4))
        );
    }

    function test_publishEpoch_revertsForBadThreshold() public {
        expectPublishRevert(
            1, 0, 3, pk1(), abi.encodeWithSelector(TkmsRegistry.InvalidThreshold.selector, uint16(0), uint16(3))
        );
        expectPublishRevert(
            1, 3, 2, pk1(), abi.encodeWithSelector(TkmsRegistry.InvalidThreshold.selector, uint16(3), uint16(2))
        );
        expectPublishRevert(
            1, 0, 0, pk1(), abi.encodeWithSelector(TkmsRegistry.InvalidThreshold.selector, uint16(0), uint16(0))
        );
        publish(1, 3, 3, pk1()); // t == n is allowed
        publish(2, 1, 1, pk1()); // 1-of-1 is allowed
    }

    function test_publishEpoch_revertsForCommitteeLargerThanNodeSet() public {
        expectPublishRevert(
            1, 2, 4, pk1(), abi.encodeWithSelector(TkmsRegistry.CommitteeTooLarge.selector, uint16(4), uint256(3))
        );
    }

    function test_publishEpoch_revertsForZeroHashes() public {
        vm.startPrank(MANAGER);
        vm.expectRevert(err(TkmsRegistry.ZeroHash.selector));
        reg.publishEpoch(1, 2, 3, pk1(), bytes32(0), TRANSCRIPT_HASH);
        vm.expectRevert(err(TkmsRegistry.ZeroHash.selector));
        reg.publishEpoch(1, 2, 3, pk1(), SHARES_HASH, bytes32(0));
        vm.stopPrank();
    }

    function test_publishEpoch_revertsForBadKeys() public {
        expectPublishRevert(1, 2, 3, "", abi.encodeWithSelector(TkmsRegistry.InvalidKeyLength.selector, 0));
        expectPublishRevert(
            1, 2, 3, abi.encodePacked(pk1(), hex"00"), abi.encodeWithSelector(TkmsRegistry.InvalidKeyLength.selector, 34)
        );
        expectPublishRevert(
            1, 2, 3, key(0x05, GX), abi.encodeWithSelector(TkmsRegistry.InvalidKeyPrefix.selector, bytes1(0x05))
        );
        expectPublishRevert(1, 2, 3, key(0x03, 7), err(TkmsRegistry.KeyNotOnCurve.selector));
        expectPublishRevert(1, 2, 3, key(0x02, P), err(TkmsRegistry.KeyNotOnCurve.selector));
        vm.assertEq(uint256(reg.currentEpoch()), 0);
    }

    function test_publishEpoch_revertsForUnapprovedKeyChange() public {
        publish(1, 2, 3, pk1());
        expectPublishRevert(
            2, 2, 3, pk2(), abi.encodeWithSelector(TkmsRegistry.KeyChangeNotApproved.selector, keccak256(pk2()))
        );
        // an approval for another key does not help
        vm.prank(OWNER);
        reg.approveKeyChange(pk3());
        expectPublishRevert(
            2, 2, 3, pk2(), abi.encodeWithSelector(TkmsRegistry.KeyChangeNotApproved.selector, keccak256(pk2()))
        );
        vm.assertEq(reg.kmsPublicKey(), pk1());
    }

    function test_keyChange_approvedThenConsumed() public {
        publish(1, 2, 3, pk1());
        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.KeyChangeApproved(keccak256(pk2()), pk2());
        vm.prank(OWNER);
        reg.approveKeyChange(pk2());
        vm.assertEq(reg.approvedKeyHash(), keccak256(pk2()));

        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.PublicKeyChanged(2, pk1(), pk2());
        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.EpochPublished(2, 2, 3, pk2(), SHARES_HASH, TRANSCRIPT_HASH);
        publish(2, 2, 3, pk2());
        vm.assertEq(reg.kmsPublicKey(), pk2());
        vm.assertEq(reg.approvedKeyHash(), bytes32(0));
        vm.assertEq(reg.epoch(1).publicKey, pk1());

        // the approval was consumed: going back to pk1 needs a new one
        expectPublishRevert(
            3, 2, 3, pk1(), abi.encodeWithSelector(TkmsRegistry.KeyChangeNotApproved.selector, keccak256(pk1()))
        );
        // a reshare of pk2 needs none
        publish(3, 2, 3, pk2());
    }

    function test_approveKeyChange_revertsForNonOwner() public {
        vm.expectRevert(err(TkmsRegistry.NotOwner.selector, MANAGER));
        vm.prank(MANAGER);
        reg.approveKeyChange(pk2());
    }

    function test_approveKeyChange_revertsForBadKey() public {
        vm.startPrank(OWNER);
        vm.expectRevert(abi.encodeWithSelector(TkmsRegistry.InvalidKeyLength.selector, 32));
        reg.approveKeyChange(abi.encodePacked(GX));
        vm.expectRevert(abi.encodeWithSelector(TkmsRegistry.InvalidKeyPrefix.selector, bytes1(0x04)));
        reg.approveKeyChange(key(0x04, GX));
        vm.expectRevert(err(TkmsRegistry.KeyNotOnCurve.selector));
        reg.approveKeyChange(key(0x02, 9));
        vm.stopPrank();
    }

    function test_approveKeyChange_revertsForCurrentKey() public {
        publish(1, 2, 3, pk1());
        vm.expectRevert(err(TkmsRegistry.KeyUnchanged.selector));
        vm.prank(OWNER);
        reg.approveKeyChange(pk1());
    }

    function test_approveKeyChange_replacesPending() public {
        publish(1, 2, 3, pk1());
        vm.startPrank(OWNER);
        reg.approveKeyChange(pk2());
        reg.approveKeyChange(pk3());
        vm.stopPrank();
        vm.assertEq(reg.approvedKeyHash(), keccak256(pk3()));
        expectPublishRevert(
            2, 2, 3, pk2(), abi.encodeWithSelector(TkmsRegistry.KeyChangeNotApproved.selector, keccak256(pk2()))
        );
        publish(2, 2, 3, pk3());
        vm.assertEq(reg.kmsPublicKey(), pk3());
    }

    function test_cancelKeyChange() public {
        publish(1, 2, 3, pk1());
        vm.prank(OWNER);
        reg.approveKeyChange(pk2());
        vm.expectEmit(true, true, true, true, address(reg));
        emit TkmsRegistry.KeyChangeCancelled(keccak256(pk2()));
        vm.prank(OWNER);
        reg.cancelKeyChange();
        vm.assertEq(reg.approvedKeyHash(), bytes32(0));
        expectPublishRevert(
            2, 2, 3, pk2(), abi.encodeWithSelector(TkmsRegistry.KeyChangeNotApproved.selector, keccak256(pk2()))
        );
    }

    function test_cancelKeyChange_revertsForNonOwner() public {
        vm.prank(OWNER);
        reg.approveKeyChange(pk2());
        vm.expectRevert(err(TkmsRegistry.NotOwner.selector, STRANGER));
        vm.prank(STRANGER);
        reg.cancelKeyChange();
    }

    function test_cancelKeyChange_revertsWhenNonePending() public {
        vm.expectRevert(err(TkmsRegistry.NoKeyChangePending.selector));
        vm.prank(OWNER);
        reg.cancelKeyChange();
    }

    function test_genesis_needsNoApproval_andKeepsPendingOne() public {
        // an approval made before genesis is not consumed by the genesis epoch
        vm.prank(OWNER);
        reg.approveKeyChange(pk2());
        publish(1, 2, 3, pk1());
        vm.assertEq(reg.approvedKeyHash(), keccak256(pk2()));
        publish(2, 2, 3, pk2());
        vm.assertEq(reg.kmsPublicKey(), pk2());
    }

    /// @dev Property: a publication succeeds iff 1 <= t <= n <= registered nodes.
    function testFuzz_publishEpoch_thresholdRule(uint16 t, uint16 n) public {
        vm.prank(MANAGER);
        if (t == 0 || t > n) {
            vm.expectRevert(abi.encodeWithSelector(TkmsRegistry.InvalidThreshold.selector, t, n));
        } else if (n > 3) {
            vm.expectRevert(abi.encodeWithSelector(TkmsRegistry.CommitteeTooLarge.selector, n, uint256(3)));
        }
        reg.publishEpoch(1, t, n, pk1(), SHARES_HASH, TRANSCRIPT_HASH);
    }

    /// @dev Property: the on-chain key check agrees with Euler's criterion computed here.
    function testFuzz_isValidCompressedKey(uint256 x, bool odd) public view {
        bytes memory k = key(odd ? 0x03 : 0x02, x);
        bool expected;
        if (x < P) {
            uint256 rhs = addmod(mulmod(mulmod(x, x, P), x, P), 7, P);
            expected = powmod(rhs, (P - 1) / 2) == 1;
        }
        vm.assertEq(reg.isValidCompressedKey(k), expected);
    }

    function powmod(uint256 b, uint256 e) internal pure returns (uint256 r) {
        r = 1;
        b %= P;
        while (e > 0) {
            if (e & 1 == 1) r = mulmod(r, b, P);
            b = mulmod(b, b, P);
            e >>= 1;
        }
    }
}
